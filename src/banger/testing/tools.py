"""Which host programs banger and its tests run, and whether ``scripts/setup.sh`` installs each one.

Two sources of program names: a static scan of the source (:func:`scan_sources`: argv literals handed to
banger's spawner or to ``subprocess``, ``which``/``require`` arguments, argv builders' first words) and a
runtime record (``BANGER_TOOL_LOG``: :func:`banger.host.run.require` appends every program it resolves,
in every process of a test run). Each program is mapped to its Debian package with ``dpkg -S``; a package
that is neither in setup.sh's lists nor Essential on a bare Debian would be missing on a new machine.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SPAWNERS = {"run", "run_sync", "start", "spawn_detached", "Popen", "check_output", "check_call", "call",
            "create_subprocess_exec", "_run", "_git", "argv"}
LOOKUPS = {"which", "require"}
_WORD = re.compile(r"^[a-z][a-z0-9.+_-]*$")
# banger's own subcommands, which argv-building helpers in tests and benches start with.
NOT_PROGRAMS = {"vm", "image", "kernel", "daemon", "doctor", "ssh-config", "system", "mcp", "version", "completion"}


def _first_word(node: ast.AST) -> str | None:
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        head = node.elts[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and _WORD.match(head.value):
            return head.value
    return None


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: set[str] = set()
        self._function = ""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self._function = self._function, node.name
        self.generic_visit(node)
        self._function = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if node.args and name in SPAWNERS and (word := _first_word(node.args[0])):
            self.found.add(word)
        if node.args and name in LOOKUPS:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _WORD.match(arg.value):
                self.found.add(arg.value)
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        # argv builders: `def qemu_argv(...)`, `def route_commands(...)` return the command line.
        if node.value is not None and re.search(r"argv$|_commands?$", self._function):
            for item in [node.value, *getattr(node.value, "elts", [])]:
                if word := _first_word(item):
                    self.found.add(word)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if any(re.search(r"argv|ARGV|MOUNTS|COMMAND", t) for t in targets) and (word := _first_word(node.value)):
            self.found.add(word)
        self.generic_visit(node)


def scan_sources(roots: Iterable[Path]) -> set[str]:
    """Program names the Python files under ``roots`` run."""
    scanner = _Scanner()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            scanner.visit(ast.parse(path.read_text(), str(path)))
    return scanner.found - NOT_PROGRAMS


def setup_packages(setup_sh: Path) -> set[str]:
    """Every package named in setup.sh's ``PACKAGES=(...)``-style arrays."""
    text = setup_sh.read_text()
    found: set[str] = set()
    for body in re.findall(r"^[A-Z_]*PACKAGES=\(([^)]*)\)", text, re.MULTILINE):
        found.update(w for w in body.split() if not w.startswith("#"))
    return found


def with_dependencies(packages: set[str]) -> set[str]:
    """``packages`` plus everything they depend on, as installed on this machine (apt pulls those in too)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Depends}, ${Pre-Depends}\t${Provides}\n"],
                         capture_output=True, text=True, check=True).stdout
    depends: dict[str, set[str]] = {}
    for line in out.splitlines():
        name, deps, provides = (line.split("\t") + ["", ""])[:3]
        alternatives = [alt for group in deps.split(",") for alt in group.split("|")]
        names = {re.sub(r"[\s(:].*", "", a.strip()) for a in alternatives} - {""}
        depends.setdefault(name, set()).update(names)
        for virtual in provides.split(","):
            if v := re.sub(r"[\s(].*", "", virtual.strip()):
                depends.setdefault(v, set()).add(name)
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        pkg = todo.pop()
        if pkg not in seen:
            seen.add(pkg)
            todo.extend(depends.get(pkg, ()))
    return seen


def essential_packages() -> set[str]:
    """Packages a bare Debian (mmdebstrap minbase) has without being asked: Essential and Priority required."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Essential}\t${Priority}\n"],
                         capture_output=True, text=True, check=True).stdout
    rows = (line.split("\t") for line in out.splitlines())
    return {r[0] for r in rows if len(r) == 3 and (r[1] == "yes" or r[2] == "required")}


def package_of(path: str) -> str | None:
    """The Debian package that installed ``path`` (merged-/usr aware), or None."""
    real = os.path.realpath(path)
    candidates = {path, real}
    for p in list(candidates):
        for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
            if p.startswith(a):
                candidates.add(b + p[len(a):])
            elif p.startswith(b):
                candidates.add(a + p[len(b):])
    for cand in sorted(candidates):
        done = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


@dataclass(frozen=True)
class Finding:
    """A program that a new machine would lack, and why."""

    program: str
    problem: str


def check_programs(programs: Iterable[str], allowed: set[str], *, ignore_under: Iterable[Path] = ()) -> list[Finding]:
    """Each program (name or path) that is not found, or whose package setup.sh does not install."""
    skip = [str(p) for p in ignore_under]
    findings = []
    for prog in sorted(set(programs)):
        path = prog if os.path.isabs(prog) else _which(prog)
        if path is None:
            findings.append(Finding(prog, "not installed on this machine (which package provides it?)"))
            continue
        if any(os.path.realpath(path).startswith(s) for s in skip):
            continue
        pkg = package_of(path)
        if pkg is None:
            findings.append(Finding(prog, f"{path} belongs to no Debian package"))
        elif pkg not in allowed:
            findings.append(Finding(prog, f"{path} comes from package {pkg!r}, which scripts/setup.sh does not "
                                          "install"))
    return findings


# Where a bare Debian has programs: /usr/local and per-user tool managers (pyenv) are this machine's own.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _which(name: str) -> str | None:
    return shutil.which(name, path=SYSTEM_PATH)
