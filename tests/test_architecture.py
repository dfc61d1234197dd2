"""The shape of the project (docs/DESIGN.md), enforced.

- `chunker` imports only the standard library.
- `engine` never imports `chunker` or `stream_server`, and has no asyncio.
- nothing imports `stream_server` except itself (and tests).
- the server core never imports its CLI tools (`stream_server.tools`), its Ray Serve deployment
  (`stream_server.ray_serve`) or Ray; only the command line (`__main__`) wires the tools in.
- model files do no file or hub I/O.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_modules(path: Path, *, members: bool = False) -> set[str]:
    """Every module an import statement names; ``members``: ``from a import b`` also counts ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if members:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("path", _python_files("chunker"), ids=lambda p: p.name)
def test_chunker_uses_only_the_standard_library(path: Path) -> None:
    foreign = {
        _top(m)
        for m in _imported_modules(path)
        if _top(m) not in sys.stdlib_module_names and _top(m) != "chunker"
    }
    assert not foreign, f"{path.relative_to(ROOT)} imports non-stdlib modules {sorted(foreign)}"


@pytest.mark.parametrize("path", _python_files("engine"), ids=lambda p: p.name)
def test_engine_imports_neither_chunker_nor_server_nor_asyncio(path: Path) -> None:
    bad = {_top(m) for m in _imported_modules(path)} & {"chunker", "stream_server", "asyncio"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", _python_files("chunker") + _python_files("engine"), ids=lambda p: p.name
)
def test_nothing_outside_the_server_imports_it(path: Path) -> None:
    assert "stream_server" not in {_top(m) for m in _imported_modules(path)}


def _server_core_files() -> list[Path]:
    apart = {ROOT / "stream_server" / "tools", ROOT / "stream_server" / "ray_serve"}
    return [
        p for p in _python_files("stream_server")
        if not apart & set(p.parents) and p.name != "__main__.py"
    ]


def test_the_server_core_is_the_bulk_of_stream_server() -> None:
    core = {p.relative_to(ROOT).as_posix() for p in _server_core_files()}
    assert {"stream_server/app.py", "stream_server/api/openai_speech.py"} <= core
    assert not any(p.startswith(("stream_server/tools/", "stream_server/ray_serve/")) for p in core)


@pytest.mark.parametrize(
    "path", _server_core_files(), ids=lambda p: p.relative_to(ROOT / "stream_server").as_posix()
)
def test_the_server_core_imports_neither_tools_nor_ray(path: Path) -> None:
    bad = {
        m for m in _imported_modules(path, members=True)
        if _top(m) == "ray"
        or m.startswith(("stream_server.tools", "stream_server.ray_serve"))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


MODEL_FILES = ["engine/f5/model.py", "engine/f5/sampler.py", "engine/f5/batch.py", "engine/f5/mel.py"]
IO_MODULES = {"os", "io", "pathlib", "shutil", "safetensors", "huggingface_hub", "requests", "urllib"}
IO_CALLS = {"open", "print", "load", "save", "load_file", "save_file", "hf_hub_download"}


@pytest.mark.parametrize("rel", MODEL_FILES)
def test_model_files_do_no_io(rel: str) -> None:
    path = ROOT / rel
    if not path.exists():
        pytest.fail(f"{rel} is missing")
    imported = {_top(m) for m in _imported_modules(path)}
    assert not imported & IO_MODULES, f"{rel} imports I/O modules {sorted(imported & IO_MODULES)}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in IO_CALLS:
                calls.add(name)
    assert not calls, f"{rel} calls I/O functions {sorted(calls)}"
