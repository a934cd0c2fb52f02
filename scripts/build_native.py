"""Compile the router's per-request modules with mypyc (``make native``).

    .venv/bin/python scripts/build_native.py

Writes the extension modules and a manifest of their sources to
``src/hakit/router/_compiled/`` (see hakit/router/native.py for how and when they are
used). The new build replaces the old one only once it is complete: a failed
build leaves the previous one (or none) in place. Needs a C compiler and the
Python headers (Debian: gcc, python3-dev; ``make`` installs them when root).
Intermediate C and object files go to ``build/native/``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE_DIR = SRC / "hakit" / "router"
WORK = ROOT / "build" / "native"


def _native() -> ModuleType:
    """hakit/router/native.py, loaded from its file alone: imported as hakit.router.native,
    it would first run the router package's ``__init__``, which chooses (and loads) a
    build of the very modules this script replaces."""
    path = PACKAGE_DIR / "native.py"
    spec = importlib.util.spec_from_file_location("hakit_build_native", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


_NATIVE = _native()
COMPILED_DIR: str = _NATIVE.COMPILED_DIR
COMPILED_MODULES: tuple[str, ...] = _NATIVE.COMPILED_MODULES
GROUP: str = _NATIVE.GROUP
MANIFEST: str = _NATIVE.MANIFEST
ext_suffix = _NATIVE.ext_suffix
manifest_for = _NATIVE.manifest_for


def compile_into(lib_dir: Path) -> None:
    """Run mypyc and the C compiler; the modules land under ``lib_dir``."""
    from mypyc.build import mypycify  # the build's only use of mypy: imported here
    from setuptools import Distribution

    os.environ["MYPY_CACHE_DIR"] = str(WORK / "mypy-cache")
    os.chdir(SRC)  # mypyc names modules by their path: hakit/router/http.py -> hakit.router.http
    extensions = mypycify(
        [f"hakit/router/{name}.py" for name in COMPILED_MODULES],
        opt_level="3",
        debug_level="0",
        group_name=GROUP,
        target_dir=str(WORK / "c"),
        multi_file=True,  # several C files: compiled in parallel below
    )
    c_files = [Path(source) for ext in extensions for source in ext.sources]
    if problems := doubly_traversed(c_files):
        raise SystemExit("build_native: " + "\n".join(problems))
    distribution = Distribution({"name": "hakit-native", "ext_modules": extensions})
    command = distribution.get_command_obj("build_ext")
    command.build_lib = str(lib_dir)
    command.build_temp = str(WORK / "obj")
    command.parallel = os.cpu_count() or 1
    command.ensure_finalized()
    command.run()


_TRAVERSE = re.compile(r"^(\w+)_traverse\(.*?^}", re.MULTILINE | re.DOTALL)
_VISIT = re.compile(r"^\s*Py_VISIT\((self->\w+)\);", re.MULTILINE)


def doubly_traversed(c_files: list[Path]) -> list[str]:
    """Fields a generated ``tp_traverse`` visits more than once.

    Why: mypyc emits one visit per declaration, so an attribute a subclass declares
    again (annotated in its ``__init__``) after a base class declared it is visited
    twice. The garbage collector then counts each reference to it twice, takes
    objects still in use for garbage and clears them: the router segfaulted on a
    write batch whose fields a collection had emptied. Caught here, at build time.
    """
    problems = []
    for path in c_files:
        if not path.exists():
            continue
        for match in _TRAVERSE.finditer(path.read_text()):
            fields = _VISIT.findall(match.group(0))
            for field in sorted({f for f in fields if fields.count(f) > 1}):
                problems.append(
                    f"{match.group(1)} visits {field} twice: an attribute declared in a base "
                    "class is annotated again in a subclass (assign it without annotation)"
                )
    return problems


def main() -> int:
    started = time.monotonic()
    before = manifest_for(PACKAGE_DIR)
    staging = WORK / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    lib_dir = WORK / "lib"
    shutil.rmtree(lib_dir, ignore_errors=True)
    compile_into(lib_dir)
    if manifest_for(PACKAGE_DIR) != before:
        print("build_native: a source changed during the build; run it again", file=sys.stderr)
        return 1
    staging.mkdir(parents=True)
    suffix = ext_suffix()
    for name in COMPILED_MODULES:
        shutil.copy2(lib_dir / "hakit" / "router" / f"{name}{suffix}", staging)
    shutil.copy2(lib_dir / f"{GROUP}__mypyc{suffix}", staging)
    (staging / MANIFEST).write_text(before.to_json() + "\n")
    # Swap in the complete build; the old one (if any) is removed only after.
    target = PACKAGE_DIR / COMPILED_DIR
    old = WORK / "old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    seconds = time.monotonic() - started
    print(f"build_native: {len(COMPILED_MODULES)} modules compiled into {target} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
