"""Every value that reaches a shell is quoted by banger.script: hostile refs, paths and names fed to every
script builder, each generated script checked with ``sh -n`` and run for real (sh and bash, in tmp_path,
with a real git repository or a fake git on PATH that records its argv); no marker file ever appears."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from banger.errors import InvalidArgument
from banger.script import Script, fill, quote
from banger.workspace import patch, plan

SHELLS = ("sh", "bash")  # the guest runs scripts with the login shell: dash or bash in Debian images


def hostile(marker: Path) -> list[str]:
    """Values that each try to create ``marker`` (or to be read as options) if they are not quoted."""
    m = str(marker)
    return [
        f"x'; touch {m}; echo '",
        f"$(touch {m})",
        f"`touch {m}`",
        f"a\ntouch {m}\nb",
        f"; touch {m} ;",
        f'"; touch {m}; echo "',
        f"\\'; touch {m}; \\'",
        f"${{IFS}}touch${{IFS}}{m}",
        f"a && touch {m} ||",
        f"x | touch {m} &",
        f"-x --output={m}",
        "sp  ace\ttab",
        "naïve-ünï✓-日本",
        "*?[a]~ {a,b}",
        "trailing\\",
        "!! $HOME %s %n",
    ]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def sh(shell: str, script: str, *, cwd: Path, env: dict[str, str] | None = None,
       stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    syntax = subprocess.run([shell, "-n", "-c", script], capture_output=True)
    assert syntax.returncode == 0, (script, syntax.stderr)
    return subprocess.run([shell, "-c", script], cwd=cwd, input=stdin, capture_output=True,
                          env={**os.environ, **(env or {})})


def git(cwd: Path, *argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_repo(path: Path) -> str:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "T")
    git(path, "config", "user.email", "t@example.test")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    return git(path, "rev-parse", "HEAD").strip()


def fake_program(bin_dir: Path, name: str, log: Path, tail: str = "") -> None:
    """An executable ``name`` that appends [cwd, *argv] as one JSON line to ``log`` (then runs ``tail``)."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps([os.getcwd(), *sys.argv[1:]]) + '\\n')\n" + tail)
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def fake_git(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A ``git`` first on PATH that logs its cwd and argv and answers ``rev-parse HEAD``."""
    log = tmp_path / "git.log"
    fake_program(tmp_path / "bin", "git", log,
                 "if sys.argv[1:] == ['rev-parse', 'HEAD']:\n    print(os.environ['FAKE_HEAD'])\n")
    return {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_HEAD": "c" * 40}, log


def one_file_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


# --- the helper itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_quote_and_cmd_round_trip_every_value(tmp_path: Path, marker: Path, shell: str) -> None:
    vals = hostile(marker)
    s = Script().cmd(sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *vals)
    res = sh(shell, s.render(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == vals
    for v in vals:
        assert sh(shell, f"printf %s {quote(v)}", cwd=tmp_path).stdout.decode() == v
        said = sh(shell, Script().say(f"banger: {v} is bad").render(), cwd=tmp_path)
        assert said.stderr.decode() == f"banger: {v} is bad\n"
    assert not marker.exists()


def test_fill_quotes_fields_and_keeps_doubled_braces() -> None:
    assert fill("cd {} && {{ echo; }}", "a b") == "cd 'a b' && { echo; }"
    assert fill("exit {code}", code=17) == "exit 17"
    with pytest.raises(ValueError):
        fill("{!r}", "x")
    with pytest.raises(ValueError):
        fill("{:>9}", "x")


def test_nul_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        quote("a\0b")
    with pytest.raises(InvalidArgument):
        plan.unpack_script("/root/a\0b")


# --- workspace prepare scripts ----------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_unpack_and_empty_check_with_hostile_paths(tmp_path: Path, marker: Path, shell: str) -> None:
    for i, v in enumerate(hostile(marker)):
        guest = str(tmp_path / f"ws{i}" / v)
        res = sh(shell, plan.unpack_script(guest), cwd=tmp_path, stdin=one_file_tar())
        assert res.returncode == 0, (v, res.stderr)
        assert (Path(guest) / "hello.txt").read_bytes() == b"hi\n", v
        again = sh(shell, plan.empty_check_script(guest), cwd=tmp_path)
        assert again.returncode == plan.NOT_EMPTY_STATUS, (v, again.stderr)
        assert again.stderr.decode() == f"banger: {guest} is not empty\n"
    assert not marker.exists()


def test_relative_guest_dirs_are_refused(marker: Path) -> None:
    for build in (plan.empty_check_script, plan.unpack_script, plan.bootstrap_script,
                  lambda g: patch.names_script(g, "HEAD"), lambda g: patch.patch_script(g, "HEAD"),
                  lambda g: plan.setup_script(plan.GuestSetup(g, "a" * 40, None, False, False))):
        with pytest.raises(InvalidArgument, match="absolute"):
            build(f"-x --output={marker}")


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_script_passes_hostile_values_as_single_words(tmp_path: Path, marker: Path, shell: str,
                                                          fake_git: tuple[dict[str, str], Path]) -> None:
    env, log = fake_git
    head = env["FAKE_HEAD"]
    for i, v in enumerate(hostile(marker)):
        guest = tmp_path / f"g{i}" / v
        guest.mkdir(parents=True)
        log.unlink(missing_ok=True)
        st = plan.GuestSetup(guest_path=str(guest), head=head, branch=v, detach=False, checkout=True,
                             identity=(("user.name", v), ("user.email", v)))
        res = sh(shell, plan.setup_script(st), cwd=tmp_path, env=env)
        assert res.returncode == 0, (v, res.stderr)
        assert res.stdout.decode().splitlines()[-1] == head
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert {c[0] for c in calls} == {str(guest)}
        assert [c[1:] for c in calls] == [
            ["update-ref", f"refs/heads/{v}", head], ["symbolic-ref", "HEAD", f"refs/heads/{v}"],
            ["read-tree", head], ["checkout-index", "-a", "-u"], ["update-index", "-q", "--refresh"],
            ["config", "user.name", v], ["config", "user.email", v], ["rev-parse", "HEAD"]]
    assert not marker.exists()


@pytest.mark.parametrize("head", ["HEAD", "-x", "--index-output=/tmp/x", "a" * 39, "A" * 40, "a" * 40 + "\n"])
def test_setup_script_refuses_a_head_that_is_not_a_commit_id(head: str) -> None:
    with pytest.raises(InvalidArgument, match="commit id"):
        plan.setup_script(plan.GuestSetup("/root/repo", head, None, True, True))


def test_setup_script_in_a_real_repo_at_a_hostile_path(tmp_path: Path, marker: Path) -> None:
    for i, v in enumerate(hostile(marker)):
        repo = tmp_path / f"r{i}" / v
        head = make_repo(repo)
        (repo / ".git" / "index").unlink()  # as after unpacking a shallow .git: no index yet
        st = plan.GuestSetup(guest_path=str(repo), head=head, branch=None, detach=False, checkout=False,
                             identity=(("user.name", v.replace("\n", " ")),))  # git config values are one line
        res = sh("sh", plan.setup_script(st), cwd=tmp_path)
        assert res.returncode == 0, (v, res.stderr)
        assert res.stdout.decode().splitlines()[-1] == head
        assert git(repo, "config", "user.name").rstrip("\n") == v.replace("\n", " ")
        assert git(repo, "status", "--porcelain") == ""
    assert not marker.exists()


def test_bootstrap_script_with_hostile_guest_paths(tmp_path: Path, marker: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The log lives under tmp_path here: the real /root/.cache of this host is none of the test's business.
    monkeypatch.setattr(plan, "BOOTSTRAP_LOG", str(tmp_path / "cache" / "banger" / "mise-bootstrap.log"))
    record = tmp_path / "mise.log"
    fake_program(tmp_path / "bin", "mise", record)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    guests = []
    for i, v in enumerate(hostile(marker)):
        guest = tmp_path / f"b{i}" / v
        guest.mkdir(parents=True)
        guests.append(str(guest))
        assert sh("sh", plan.bootstrap_script(str(guest)), cwd=tmp_path, env=env).returncode == 0
    deadline = time.monotonic() + 30  # mise runs in the background
    while time.monotonic() < deadline and len(_lines(record)) < 2 * len(guests):
        time.sleep(0.05)
    calls = [json.loads(line) for line in _lines(record)]
    assert sorted(c[0] for c in calls) == sorted(g for g in guests for _ in range(2))
    assert sorted({tuple(c[1:]) for c in calls}) == [("install",), ("trust",)]
    assert not marker.exists()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- workspace export scripts -----------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_export_scripts_with_hostile_bases_and_paths(tmp_path: Path, marker: Path, shell: str) -> None:
    for i, v in enumerate(hostile(marker)):
        repo = tmp_path / f"e{i}" / v
        head = make_repo(repo)
        (repo / "a.txt").write_text("a\nchanged\n")
        names = sh(shell, patch.names_script(str(repo), head), cwd=tmp_path)
        assert names.returncode == 0, (v, names.stderr)
        assert patch.parse_names(names.stdout) == (head, ["a.txt"])
        diff = sh(shell, patch.patch_script(str(repo), "HEAD"), cwd=tmp_path)
        assert diff.returncode == 0 and b"+changed" in diff.stdout
        if v.startswith("-"):
            with pytest.raises(InvalidArgument, match="must name a commit"):
                patch.names_script(str(repo), v)
            continue
        for build in (patch.names_script, patch.patch_script):
            bad = sh(shell, build(str(repo), v), cwd=tmp_path)
            assert not marker.exists(), v
            assert bad.returncode == patch.BAD_BASE_STATUS, (v, bad.stderr)
            assert bad.stderr.decode() == f"banger: {v} is not a commit in the guest repository\n"
    assert not marker.exists()


# --- `vm exec`: the command through mise, and a workspace emptied for --auto-prepare -----------------


@pytest.mark.parametrize("shell", SHELLS)
def test_tools_command_runs_hostile_commands_as_written_with_and_without_mise(tmp_path: Path, marker: Path,
                                                                            shell: str) -> None:
    # The fake mise logs [cwd, *argv] and MISE_EXEC_AUTO_INSTALL, then runs what follows `exec --`, as mise does.
    record, installs = tmp_path / "mise.log", tmp_path / "installs.log"
    fake_program(tmp_path / "bin", "mise", record,
                 f"open({str(installs)!r}, 'a').write(os.environ.get('MISE_EXEC_AUTO_INSTALL', 'unset') + '\\n')\n"
                 "os.execvp(sys.argv[3], sys.argv[3:])\n")
    with_mise = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    for v in hostile(marker):
        command = fill("printf '%s\\n' {}; exit 7", v)
        for env in (with_mise, {"PATH": "/usr/bin:/bin"}):  # no mise on the second PATH
            res = sh(shell, plan.tools_command(command, install=False), cwd=tmp_path, env=env)
            assert (res.returncode, res.stdout.decode()) == (7, v + "\n"), (v, res.stderr)
    calls = [json.loads(line) for line in _lines(record)]
    assert len(calls) == len(hostile(marker)) and {tuple(c[1:3]) for c in calls} == {("exec", "--")}
    assert [c[5] for c in calls] == [fill("printf '%s\\n' {}; exit 7", v) for v in hostile(marker)]
    assert sh(shell, plan.tools_command("exit 0", install=True), cwd=tmp_path, env=with_mise).returncode == 0
    assert _lines(installs) == ["false"] * len(calls) + ["unset"], "mise installs tools only when asked to"
    assert not marker.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_resync_script_empties_a_workspace_only_at_its_prepared_commit(tmp_path: Path, marker: Path,
                                                                       shell: str) -> None:
    for i, v in enumerate(hostile(marker)):
        repo = tmp_path / f"s{i}" / v
        head = make_repo(repo)
        (repo / ".hidden").write_text("dot file\n")
        (repo / "-rf dir").mkdir()
        res = sh(shell, plan.resync_script(str(repo), head, unmount=i % 2 == 0), cwd=tmp_path)
        assert res.returncode == 0, (v, res.stderr)
        assert repo.is_dir() and list(repo.iterdir()) == [], v

        moved = tmp_path / f"m{i}" / v
        prepared = make_repo(moved)
        git(moved, "commit", "-q", "--allow-empty", "-m", "made in the guest")
        res = sh(shell, plan.resync_script(str(moved), prepared, unmount=False), cwd=tmp_path)
        assert res.returncode == plan.MOVED_STATUS and (moved / "a.txt").exists(), (v, res.stderr)
    gone = sh(shell, plan.resync_script(str(tmp_path / "never made"), "a" * 40, unmount=True), cwd=tmp_path)
    assert gone.returncode == 0
    assert not marker.exists()
