"""A real ``git clone`` and ``git push`` over smart HTTP through the router, during a failover.

Two nodes serve the same bare repository with ``git http-backend``
(tests/support/git_http.py). Each git operation starts while no node may
serve (a failover is under way): its first request, the ref advertisement
(``GET info/refs``), is held by the router (router.hold_timeout) until n1
becomes active. Right after n1 answered it, n1 goes away (stops listening)
and n2 takes the lease, so git's following requests, which carry bodies
(POST upload-pack / receive-pack, a few MB for the push), go to n2. The
operation succeeds and the user never sees the failover.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.coord.view import ClusterView
from tests.support.git_http import GIT, GitHttpServer, git, git_env
from tests.support.router_harness import ClusterHolder, RouterThread, make_config, record

HOLD = 20.0


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[GitHttpServer, GitHttpServer]]:
    root = tmp_path / "repos"
    root.mkdir()
    n1, n2 = GitHttpServer("n1", root), GitHttpServer("n2", root)
    try:
        yield n1, n2
    finally:
        n1.stop()
        n2.stop()


@pytest.fixture
def router(
    tmp_path: Path, cluster: ClusterHolder, nodes: tuple[GitHttpServer, GitHttpServer]
) -> Iterator[RouterThread]:
    n1, n2 = nodes
    cfg = make_config(tmp_path, {"n1": n1.port, "n2": n2.port})
    router_cfg = cfg.router.model_copy(update={"hold_timeout": HOLD})
    # A failover is under way: no node holds the lease yet.
    cluster.view = ClusterView(
        None, {"n1": record("n1", "standby", 0), "n2": record("n2", "standby", 0)}, 0
    )
    thread = RouterThread(cfg.model_copy(update={"router": router_cfg}), cluster, None)
    try:
        yield thread
    finally:
        thread.close()


def held_count(router: RouterThread) -> int:
    """Requests waiting in the router for a node now (Router.requests_held, read in its loop)."""

    async def read() -> int:
        return router.router.requests_held

    return router.call(read())


def arm_failover(n1: GitHttpServer, cluster: ClusterHolder, router: RouterThread) -> None:
    """After n1's first ref advertisement, n1 leaves and n2 takes over."""

    def hook(path: str, query: str) -> bool:
        if not path.endswith("/info/refs"):
            return False
        n1.hook = None
        cluster.active("n2", 2, others=("n1",))
        router.refresh()
        threading.Thread(target=n1.stop_listening, daemon=True).start()
        return True  # n1's last answer on this connection

    n1.hook = hook


def run_during_failover(
    env: dict[str, str], args: list[str], cwd: Path, cluster: ClusterHolder, router: RouterThread
) -> None:
    """Run git while no node serves; activate n1 once git's first request is held."""
    proc = subprocess.Popen(
        [GIT, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while held_count(router) == 0:
            assert proc.poll() is None, f"git ended before being held: {proc.communicate()}"
            assert time.monotonic() < deadline, "git's first request was not held"
            time.sleep(0.01)
        cluster.active("n1", 1, others=("n2",))
        router.refresh()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"git {' '.join(args)} failed:\n{stderr}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def random_file(path: Path, size: int) -> None:
    path.write_bytes(os.urandom(size))  # incompressible: the pack really is this large


def make_repository(root: Path, env: dict[str, str], work: Path) -> Path:
    bare = root / "project.git"
    git(env, "init", "--bare", "--initial-branch=main", bare)
    git(env, "init", "--initial-branch=main", work)
    random_file(work / "data.bin", 3 * 1024 * 1024)
    (work / "README").write_text("hello through the router\n")
    git(env, "add", ".", cwd=work)
    git(env, "commit", "-q", "-m", "first", cwd=work)
    git(env, "push", "-q", bare, "main", cwd=work)
    return bare


def test_git_clone_during_failover(tmp_path, nodes, cluster, router) -> None:
    n1, n2 = nodes
    env = git_env(tmp_path)
    bare = make_repository(n1.root, env, tmp_path / "origin")
    arm_failover(n1, cluster, router)
    url = f"http://127.0.0.1:{router.port}/project.git"
    run_during_failover(env, ["clone", "-q", url, "clone"], tmp_path, cluster, router)
    clone = tmp_path / "clone"
    assert (clone / "data.bin").read_bytes() == (tmp_path / "origin" / "data.bin").read_bytes()
    assert git(env, "rev-parse", "HEAD", cwd=clone) == git(
        env, "--git-dir", bare, "rev-parse", "main"
    )
    assert [path for _, path in n1.requests] == ["/project.git/info/refs?service=git-upload-pack"]
    assert n2.requests and all(
        (method, path) == ("POST", "/project.git/git-upload-pack") for method, path in n2.requests
    )


def test_git_push_during_failover(tmp_path, nodes, cluster, router) -> None:
    n1, n2 = nodes
    env = git_env(tmp_path)
    work = tmp_path / "origin"
    bare = make_repository(n1.root, env, work)
    random_file(work / "more.bin", 4 * 1024 * 1024)  # larger than http.postBuffer: chunked
    git(env, "add", ".", cwd=work)
    git(env, "commit", "-q", "-m", "second", cwd=work)
    git(env, "branch", "feature", cwd=work)
    arm_failover(n1, cluster, router)
    url = f"http://127.0.0.1:{router.port}/project.git"
    run_during_failover(env, ["push", "-q", url, "main", "feature"], work, cluster, router)
    local = git(env, "rev-parse", "main", cwd=work)
    assert git(env, "--git-dir", bare, "rev-parse", "main") == local
    assert git(env, "--git-dir", bare, "rev-parse", "feature") == local
    git(env, "--git-dir", bare, "fsck", "--no-progress")
    assert [path for _, path in n1.requests] == ["/project.git/info/refs?service=git-receive-pack"]
    assert ("POST", "/project.git/git-receive-pack") in n2.requests
    assert n2.chunked == ["/project.git/git-receive-pack"]  # the pack streamed through, chunked
