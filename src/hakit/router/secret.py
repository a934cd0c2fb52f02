"""The cluster secret that signs the router's sticky cookie (lb-cookie).

``router.secret`` in the config wins. Without it the secret is generated once
into ``<cluster.state_dir>/router.secret`` (mode 0600) and read from there by
every router sharing that directory, so their cookies agree.

Two routers starting at the same moment must not end up with two secrets:
each writes a complete candidate to a temporary file and ``os.link``\\ s it to
the final name. A link never replaces an existing file, so exactly one
candidate wins and everybody (the losers too) reads the winner. A reader
never sees a half-written file: the final name only ever points at a complete
one.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Final

from hakit.config import Config
from hakit.errors import HakitError

log = logging.getLogger("hakit.router")

SECRET_FILE: Final = "router.secret"
MIN_LENGTH: Final = 16  # characters; the generated secret has 43 (32 random bytes, base64url)


def cluster_secret(cfg: Config) -> bytes:
    """The key for the sticky cookie's HMAC (config first, else the state file)."""
    if cfg.router.secret is not None:
        return cfg.router.secret.encode()
    return load_or_create(cfg.cluster.state_dir / SECRET_FILE)


def load_or_create(path: Path) -> bytes:
    """Read the secret at ``path``; create it first if there is none (race-free)."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as error:
        raise HakitError(
            f"router: cannot create the sticky-cookie secret {path} ({error.strerror or error}); "
            "make cluster.state_dir writable for the router, or set router.secret in the config"
        ) from error
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_urlsafe(32).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # never replaces: if another router won, keep theirs
        except FileExistsError:
            pass
        except OSError as error:
            raise HakitError(
                f"router: cannot create the sticky-cookie secret {path} "
                f"({error.strerror or error}; the file system must support hard links); "
                "set router.secret in the config instead"
            ) from error
        _fsync_dir(path.parent)
    finally:
        os.unlink(temp)
    return _read(path)


def _read(path: Path) -> bytes:
    data = path.read_bytes().strip()
    if len(data) < MIN_LENGTH:
        raise HakitError(
            f"router: the sticky-cookie secret {path} is empty or shorter than {MIN_LENGTH} "
            "characters; delete it (a new one is generated; users are re-balanced once) "
            "or set router.secret in the config"
        )
    if path.stat().st_mode & 0o077:
        log.warning(
            "router: %s is readable by other users; whoever reads it can forge sticky "
            "cookies. Run: chmod 600 %s",
            path,
            path,
        )
    return data


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the link itself is done
    finally:
        os.close(fd)
