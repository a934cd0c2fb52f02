"""The router's per-request modules, compiled with mypyc when a fresh build of them exists.

Why: CPython's interpretation of the per-request glue (parsing callbacks,
header rewriting, stickiness, the pool) was most of the router's CPU time per
request (benchmarks/RESULTS.md). mypyc compiles the same type-annotated .py
files to C extension modules, so there is no second implementation to keep in
step: the sources, their tests and mypy stay the one truth.

How: ``scripts/build_native.py`` (``make native``, part of ``make test`` and
``make demo``) writes the extension modules to ``src/hakit/router/_compiled/``
with a manifest: the interpreter they were built for and each compiled
source's SHA-256. The router package (``hakit/router/__init__.py``) puts that
directory first on its ``__path__`` only when the manifest matches this
interpreter and every source it lists, byte for byte. A missing build means
pure Python; a stale one (a source edited since) means pure Python and one
warning: the router never runs code that differs from its source.

``HAKIT_PURE_PYTHON=1`` forces pure Python (benchmarks compare both; handy
with a debugger).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hakit.native")

# The modules of hakit.router that run for every request (and those whose classes
# subclass theirs: an interpreted class cannot inherit from a compiled one).
COMPILED_MODULES: tuple[str, ...] = (
    "accesslog",
    "balance",
    "batch",
    "exchange",
    "forwarding",
    "headers",
    "hold",
    "http",
    "limits",
    "metrics",
    "pages",
    "pool",
    "responses",
    "secret",
    "server",
    "health",
    "hooks",
    "sticky",
    "upstream",
)
PACKAGE = "hakit.router"
COMPILED_DIR = "_compiled"  # in the package's source directory; not in git
MANIFEST = "manifest.json"
GROUP = "hakit_router"  # mypyc's shared library for the group: <GROUP>__mypyc
PURE_ENV = "HAKIT_PURE_PYTHON"


@dataclass(frozen=True)
class Manifest:
    """What a build was made from: the interpreter's extension suffix and source digests."""

    ext_suffix: str
    sources: dict[str, str]  # module name (e.g. "http") -> SHA-256 of its .py

    def to_json(self) -> str:
        return json.dumps({"ext_suffix": self.ext_suffix, "sources": self.sources}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        sources = data["sources"]
        if not isinstance(data["ext_suffix"], str) or not isinstance(sources, dict):
            raise ValueError("not a manifest")
        return cls(data["ext_suffix"], {str(k): str(v) for k, v in sources.items()})


def ext_suffix() -> str:
    """This interpreter's suffix for extension modules (``.cpython-311-x86_64-linux-gnu.so``)."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_for(package_dir: Path, modules: Sequence[str] = COMPILED_MODULES) -> Manifest:
    """The manifest a build of ``modules`` from ``package_dir`` made now would have."""
    return Manifest(
        ext_suffix(), {name: source_digest(package_dir / f"{name}.py") for name in modules}
    )


def stale_reason(manifest: Manifest, package_dir: Path, suffix: str) -> str | None:
    """Why a build described by ``manifest`` must not be used here, or None (it is fresh)."""
    if manifest.ext_suffix != suffix:
        return f"were built for another interpreter ({manifest.ext_suffix}, this is {suffix})"
    changed = []
    for name, digest in sorted(manifest.sources.items()):
        source = package_dir / f"{name}.py"
        if not source.exists() or source_digest(source) != digest:
            changed.append(source.name)
    if changed:
        return "are older than their sources: " + ", ".join(changed)
    return None


@dataclass(frozen=True)
class PathChoice:
    path: list[str]  # the package's __path__ to use
    mode: str  # what the router runs, for people: "compiled (mypyc)" or "pure Python (why)"
    warn: bool = False  # a build exists but cannot be used: say so


def choose_path(
    package_path: Sequence[str], package_dir: Path, environ: Mapping[str, str]
) -> PathChoice:
    """The package ``__path__`` to use: the compiled modules first when fresh, else unchanged."""
    path = list(package_path)
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return PathChoice(path, f"pure Python ({PURE_ENV} is set)")
    compiled = package_dir / COMPILED_DIR
    try:
        manifest = Manifest.from_json((compiled / MANIFEST).read_text())
    except FileNotFoundError:
        return PathChoice(path, "pure Python (not compiled: run `make native`)")
    except (OSError, ValueError, KeyError) as error:
        return PathChoice(path, f"pure Python (unreadable {compiled / MANIFEST}: {error})", True)
    reason = stale_reason(manifest, package_dir, ext_suffix())
    if reason is not None:
        return PathChoice(path, f"pure Python: compiled modules {reason}; run `make native`", True)
    return PathChoice([str(compiled), *path], "compiled (mypyc)")


def _load_group_library(compiled: Path) -> None:
    """Import mypyc's shared library of the group by file (its modules import it by name)."""
    name = f"{GROUP}__mypyc"
    if name in sys.modules:
        return
    location = compiled / f"{name}{ext_suffix()}"
    spec = importlib.util.spec_from_file_location(name, location)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


# How the running process got its router modules (shown by `hakit router` at start).
mode = "pure Python (not decided yet)"


def use_compiled(package_path: list[str], package_file: str) -> list[str]:
    """Called by hakit.router's ``__init__``: its ``__path__``, compiled modules first if fresh."""
    global mode
    package_dir = Path(package_file).resolve().parent
    choice = choose_path(package_path, package_dir, os.environ)
    mode = choice.mode
    if choice.warn:
        log.warning("hakit.router: %s", mode)
    if choice.path == list(package_path):
        return choice.path
    try:
        _load_group_library(package_dir / COMPILED_DIR)
    except ImportError as error:
        mode = f"pure Python (the compiled library does not load: {error})"
        log.warning("hakit.router: %s", mode)
        return list(package_path)
    return choice.path
