"""The typed wire: every RPC declared once in banger.api, every result a model all the way down."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from banger import api, wire
from banger.daemon.methods import METHODS

SRC = Path(__file__).resolve().parents[2] / "src" / "banger"


def test_every_declaration_has_a_handler_and_the_table_holds_nothing_else() -> None:
    assert set(METHODS) == set(api.RPCS)
    assert all(METHODS[name].rpc is rpc for name, rpc in api.RPCS.items())
    assert len(api.RPCS) >= 45


@pytest.mark.parametrize("name", sorted(api.RPCS))
def test_each_declaration_names_models(name: str) -> None:
    rpc = api.RPCS[name]
    assert issubclass(rpc.params, wire.Params)
    assert issubclass(rpc.result, BaseModel)


def _any_inside(annotation: object) -> bool:
    if annotation is typing.Any:
        return True
    return any(_any_inside(arg) for arg in typing.get_args(annotation))


def _models() -> list[type[BaseModel]]:
    return [m for m in vars(wire).values() if isinstance(m, type) and issubclass(m, BaseModel)]


MANIFESTS = {("Image", "manifest"), ("Kernel", "manifest")}


def test_no_result_carries_an_untyped_dict() -> None:
    """`dict[str, Any]` (or any Any) in a result means the CLI would dig by convention again. (An image's and
    a kernel's manifest are the files on disk, passed through for `show --json`.)"""
    loose = [f"{m.__name__}.{field}: {info.annotation}"
             for m in _models()
             for field, info in m.model_fields.items()
             if _any_inside(info.annotation) and (m.__name__, field) not in MANIFESTS]
    assert not loose, loose


def test_operation_results_are_a_tagged_union() -> None:
    op = wire.Operation.model_validate({"id": "op-1", "kind": "kernel.pull", "target": "k", "state": "succeeded",
                                        "result": {"kind": "kernel_installed",
                                                   "kernel": {"name": "k", "dir": "/x", "version": "6.1"}}})
    assert isinstance(op.result, wire.KernelInstalled) and op.result.kernel.version == "6.1"
    with pytest.raises(ValueError, match="kind"):
        wire.Operation.model_validate({"id": "op-1", "kind": "x", "target": "t", "result": {"vm": {}}})


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_no_method_name_is_spelled_outside_api() -> None:
    names = set(api.RPCS)
    spelled = {f"{p.relative_to(SRC)}: {s}" for p in SRC.rglob("*.py") if p.name != "api.py"
               for s in _string_constants(p) & names}
    assert not spelled, spelled
