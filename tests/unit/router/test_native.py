"""The choice between the compiled router modules and their sources (hakit/router/native.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hakit.router import native
from hakit.router.native import (
    COMPILED_DIR,
    MANIFEST,
    PURE_ENV,
    Manifest,
    choose_path,
    manifest_for,
)

MODULES = ("http", "headers")


def package(tmp_path: Path) -> Path:
    """A package directory with two sources and a build made from them."""
    pkg = tmp_path / "router"
    (pkg / COMPILED_DIR).mkdir(parents=True)
    for name in MODULES:
        (pkg / f"{name}.py").write_text(f"NAME = {name!r}\n")
    write_manifest(pkg, manifest_for(pkg, MODULES))
    return pkg


def write_manifest(pkg: Path, manifest: Manifest) -> None:
    (pkg / COMPILED_DIR / MANIFEST).write_text(manifest.to_json())


def test_a_fresh_build_goes_first_on_the_path(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    choice = choose_path([str(pkg)], pkg, {})
    assert choice.path == [str(pkg / COMPILED_DIR), str(pkg)]
    assert choice.mode == "compiled (mypyc)" and not choice.warn


def test_an_edited_source_makes_the_build_unused_with_a_warning(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    (pkg / "headers.py").write_text("NAME = 'edited'\n")
    choice = choose_path([str(pkg)], pkg, {})
    assert choice.path == [str(pkg)]
    assert choice.warn and "headers.py" in choice.mode and "http.py" not in choice.mode


def test_a_removed_source_makes_the_build_unused(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    (pkg / "http.py").unlink()
    choice = choose_path([str(pkg)], pkg, {})
    assert choice.path == [str(pkg)] and choice.warn and "http.py" in choice.mode


def test_a_build_for_another_interpreter_is_unused(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    fresh = manifest_for(pkg, MODULES)
    write_manifest(pkg, Manifest(".cpython-39-x86_64-linux-gnu.so", fresh.sources))
    choice = choose_path([str(pkg)], pkg, {})
    assert choice.path == [str(pkg)] and choice.warn and "cpython-39" in choice.mode


def test_no_build_is_pure_python_without_a_warning(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    (pkg / COMPILED_DIR / MANIFEST).unlink()
    choice = choose_path([str(pkg)], pkg, {})
    assert choice.path == [str(pkg)] and not choice.warn and "make native" in choice.mode


def test_a_broken_manifest_is_pure_python_with_a_warning(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    (pkg / COMPILED_DIR / MANIFEST).write_text("{not json")
    choice = choose_path([str(pkg)], pkg, {})
    assert choice.path == [str(pkg)] and choice.warn and MANIFEST in choice.mode


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_forces_pure_python(tmp_path: Path, value: str) -> None:
    pkg = package(tmp_path)
    choice = choose_path([str(pkg)], pkg, {PURE_ENV: value})
    assert choice.path == [str(pkg)] and not choice.warn and PURE_ENV in choice.mode
    assert choose_path([str(pkg)], pkg, {PURE_ENV: "0"}).mode == "compiled (mypyc)"


def test_the_loader_is_not_one_of_the_compiled_modules() -> None:
    # native.py lives in the router package but decides its __path__: it runs as source.
    assert "native" not in native.COMPILED_MODULES
    assert Path(native.__file__).name == "native.py"


def test_the_build_reads_the_module_list_without_importing_the_router() -> None:
    # scripts/build_native.py loads native.py from its file: importing hakit.router would
    # load the build it is about to replace.
    script = Path(__file__).resolve().parents[3] / "scripts" / "build_native.py"
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('build_native', {str(script)!r}); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(' '.join(module.COMPILED_MODULES)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hakit'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    modules, imported = result.stdout.splitlines()
    assert tuple(modules.split()) == native.COMPILED_MODULES
    assert imported == "[]"


def router_mode(env: dict[str, str]) -> str:
    code = (
        "import hakit.router, hakit.router.http as h, hakit.router.native as n; "
        "print(n.mode, h.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(
    not os.environ.get("HAKIT_EXPECT_COMPILED"),
    reason="set by `make test`, which builds the compiled router first",
)
def test_the_router_runs_compiled_in_make_test() -> None:
    # What the tests exercise is what users run: the compiled modules.
    assert native.mode == "compiled (mypyc)", native.mode
    import hakit.router.http

    assert hakit.router.http.__file__.endswith(native.ext_suffix())
    pure = router_mode({**os.environ, PURE_ENV: "1"})
    assert pure.startswith("pure Python") and pure.endswith("http.py")
