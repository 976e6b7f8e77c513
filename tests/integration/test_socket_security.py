"""Only the daemon's owner (or root) may talk to it: SO_PEERCRED is checked on every connection."""

from __future__ import annotations

import json
import os
import subprocess

from banger.testing.daemon import Home

# Runs as `nobody` with the system interpreter (no banger import needed): connect, send a ping, print
# either the daemon's reply or the OS error.
PROBE = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"oserror": e.errno})); sys.exit(0)
try:
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping"}\n')
except BrokenPipeError:
    pass  # refused connections are answered and closed at once; the answer is still readable
print(s.makefile("rb").readline().decode().strip() or json.dumps({"closed": True}))
"""


def _as_nobody(socket_path: str) -> dict:
    proc = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", PROBE,
         socket_path],
        capture_output=True, text=True, timeout=30, cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_other_user_cannot_reach_the_socket_directory(home: Home) -> None:
    home.start_daemon()
    reply = _as_nobody(str(home.layout.socket))
    assert reply == {"oserror": 13}, "the 0700 runtime directory must keep other users out"


def test_other_user_is_refused_by_peer_credentials(home: Home) -> None:
    home.start_daemon()
    # Open the path up so the only thing standing between `nobody` and the daemon is SO_PEERCRED.
    for p in (home.root, home.layout.runtime_dir):
        os.chmod(p, 0o711)
    os.chmod(home.layout.socket, 0o666)
    reply = _as_nobody(str(home.layout.socket))
    assert reply["error"]["data"]["type"] == "PermissionDenied"
    assert "may not use this banger daemon" in reply["error"]["message"]
    os.chmod(home.layout.runtime_dir, 0o700)  # the CLI refuses a runtime dir others may enter
    with home.client() as c:  # the owner is still served
        assert c.ping().pid == home.daemon_pid()
