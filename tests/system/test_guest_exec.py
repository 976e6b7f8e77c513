"""`vm exec` and `vm run -- CMD` through the guest agent in a real VM: separate streams and exit status,
stdin with backpressure, the workspace directory, Ctrl-C as SIGINT, and SSH when the agent is gone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

from banger.testing.daemon import Home


def test_exec_through_the_agent(vm_home: Home) -> None:
    vm_home.cli("vm", "create", "--name", "ex", check=True, timeout=400)

    proc = vm_home.cli("vm", "exec", "ex", "--", "sh", "-c", "echo out; echo err >&2; exit 3", timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
    assert vm_home.cli("vm", "exec", "ex", "--", "pwd", check=True).stdout == "/root\n"
    # One argument is a shell command line, run by bash when the guest has it (as over SSH).
    assert vm_home.cli("vm", "exec", "ex", "--", "[[ -n $BASH_VERSION ]] && echo bash", check=True).stdout == "bash\n"

    data = os.urandom(3 << 20)
    hashed = subprocess.run(vm_home.cli_argv("vm", "exec", "ex", "--", "sha256sum"), input=data,
                            capture_output=True, env=vm_home.env, timeout=120, check=True)
    assert hashed.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()

    # Ctrl-C reaches the command as SIGINT; its handler's status comes back.
    runner = subprocess.Popen(vm_home.cli_argv("vm", "exec", "ex", "--",
                                               "trap 'echo got-int; exit 42' INT; echo ready; sleep 60 & wait"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=vm_home.env, text=True)
    assert runner.stdout is not None and runner.stdout.readline() == "ready\n"
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 42 and "got-int" in out

    # Without an agent the same commands go over SSH.
    vm_home.cli("vm", "ssh", "ex", "--", "systemctl stop banger-agent", check=True, timeout=60)
    started = time.monotonic()
    fallback = vm_home.cli("vm", "exec", "ex", "--", "sh", "-c", "echo via-ssh; exit 5", timeout=120)
    assert (fallback.returncode, fallback.stdout) == (5, "via-ssh\n")
    assert time.monotonic() - started < 30
    assert json.loads(vm_home.cli("vm", "show", "ex", "--json", check=True).stdout)["state"] == "running"
