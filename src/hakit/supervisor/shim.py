"""The app's shim: a small parent that makes sure the app never outlives its agent.

``python -m hakit.supervisor.shim --fd N [--cgroup PATH] [--threshold S] [--grace S] -- COMMAND...``

The agent starts this, not the app; the shim starts the app and stays its parent:

- the app runs in a session and process group of its own, inside the app's cgroup
  (v2) where the machine allows it (hakit.supervisor.cgroup), with ``PR_SET_PDEATHSIG`` so the
  kernel kills it if the shim itself is killed;
- the shim is a child subreaper: whatever the app forks and abandons (a start
  script that daemonizes) is re-parented to the shim, not to init, so it can be
  found and stopped;
- fd N is the shim's end of the lifeline (hakit.supervisor.lifeline). When it closes, the agent
  is gone (killed, crashed, OOM-killed): the shim kills the app's whole cgroup and
  group at once and exits. While it is open, the agent arms the lease deadline on
  it at every renewal, and the shim kills the app at that deadline when no renewal
  came: a frozen agent cannot hold the app alive past its lease;
- when the app's main process ends, the shim kills what it left (systemd's
  ``KillMode=control-group``), telling the agent what was left (a start command
  that daemonized), and exits with the app's own status (the same code, or killed
  by the same signal), so the agent's supervisor reads the app's exit from it.

Only the standard library and two small hakit modules are imported: the shim starts
with every app start.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hakit.supervisor import cgroup, lifeline, proctable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PERIOD = 0.05  # the deadline keeper's tick: it notices its own freezes from gaps in these
_GONE_TIMEOUT = 10.0  # a SIGKILLed process that outlives this is stuck in the kernel
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


class Shim:
    def __init__(
        self,
        lifeline_socket: socket.socket,
        command: list[str],
        group: Path | None,
        keeper: lifeline.DeadlineKeeper,
    ) -> None:
        self.sock = lifeline_socket
        self.command = command
        self.cgroup = group
        self.keeper = keeper
        self.app: subprocess.Popen[bytes] | None = None
        self.app_status: int | None = None  # the wait status of the app's main process
        self.lifeline_open = True
        self.stopping = False  # the agent stops the app: its processes may drain (until KILL)
        self.inbox = lifeline.Inbox()
        self.wake_r, self.wake_w = os.pipe()

    # --- talking to the agent -----------------------------------------------

    def tell(self, kind: str, payload: object = None) -> None:
        if not self.lifeline_open:
            return
        try:
            self.sock.sendall(lifeline.encode(kind, payload))
        except OSError:
            self.lifeline_open = False  # the agent is gone; the next read says so

    def read_lifeline(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.lifeline_open = False
            return
        for kind, payload in self.inbox.feed(data):
            if kind == lifeline.ARM and isinstance(payload, int | float):
                self.keeper.arm(float(payload))
            elif kind == lifeline.DISARM:
                self.keeper.disarm()
            elif kind == lifeline.STOPPING:
                self.stopping = True
            elif kind == lifeline.KILL:
                self.kill_all()

    # --- the app --------------------------------------------------------------

    def start(self) -> bool:
        parent = os.getpid()
        group = self.cgroup

        def in_child() -> None:
            # Dies with the shim even if the shim is SIGKILLed; a shim that died before
            # this line ran is noticed by the parent check.
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            if group is not None:
                # e.g. a parent cgroup with controllers (no internal processes)
                with contextlib.suppress(OSError):
                    cgroup.join(group)

        try:
            self.app = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=in_child,  # the shim has one thread: safe here
            )
        except (OSError, subprocess.SubprocessError) as error:
            strerror = getattr(error, "strerror", None) or str(error)
            self.tell(lifeline.FAILED, {"error": strerror})
            return False
        if self.cgroup is not None and self.app.pid not in cgroup.members(self.cgroup):
            print(
                f"===== hakit shim: the app could not join its cgroup {self.cgroup}; its "
                "process group and this shim (subreaper) keep track of it =====",
                flush=True,
            )
            cgroup.remove(self.cgroup)
            self.cgroup = None
        self.tell(lifeline.STARTED, self.app.pid)
        return True

    def targets(self) -> set[int]:
        """Every live process the app consists of: its cgroup, its group, our descendants."""
        found: set[int] = set()
        if self.cgroup is not None:
            found.update(cgroup.members(self.cgroup))
        if self.app is not None:
            found.update(proctable.group_members(self.app.pid))
        found.update(proctable.descendants(os.getpid()))
        found.discard(os.getpid())
        return {pid for pid in found if proctable.is_live(proctable.stat_of(pid))}

    def kill_all(self) -> None:
        if self.cgroup is not None:
            cgroup.kill(self.cgroup)
        if self.app is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.app.pid, signal.SIGKILL)
        for pid in self.targets():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def reap(self) -> None:
        """Collect every child that ended: the app's main process, and orphans re-parented here."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.app is not None and pid == self.app.pid and self.app_status is None:
                self.app_status = status
                self.app.returncode = os.waitstatus_to_exitcode(status)

    def wait_all_gone(self) -> list[int]:
        """Kill and reap until nothing of the app is left; the survivors after the bound."""
        deadline = time.monotonic() + _GONE_TIMEOUT
        pause = 0.002
        while True:
            self.reap()
            left = self.targets()
            if not left or time.monotonic() >= deadline:
                return sorted(left)
            self.kill_all()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # --- the loop -------------------------------------------------------------

    def run(self) -> int:
        if not self.start():
            return 127
        fenced = False
        while self.app_status is None or (self.stopping and self.lifeline_open and self.targets()):
            # A graceful stop waits for everything the app started to end by itself
            # (a shell wrapper exits on SIGTERM before its JVM has drained); the agent
            # sends KILL when its stop_timeout runs out, and its death ends the wait too.
            now = time.monotonic()
            late = self.keeper.step(now)
            if late is not None and not fenced:
                fenced = True
                self.kill_all()
                self.tell(
                    lifeline.FENCED,
                    {
                        "reason": f"lease not renewed before its deadline ({late:.1f} s late: "
                        "the agent is frozen or cannot reach the store); killed by the "
                        "app's shim",
                    },
                )
            timeout = self.keeper.wait_hint(time.monotonic(), _PERIOD)
            if self.app_status is not None:
                timeout = min(timeout, 0.01)  # draining: /proc is the only way to see it end
            watched = [self.wake_r] + ([self.sock] if self.lifeline_open else [])
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except InterruptedError:
                ready = []
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 512)
            if self.sock in ready:
                self.read_lifeline()
                if not self.lifeline_open:
                    # The agent is gone: nothing guards the lease any more. Stop the
                    # app now, whole, and wait for it (systemd would restart the agent).
                    self.kill_all()
            self.reap()
        left_behind = sorted(self.targets())
        if left_behind and not self.stopping:
            self.tell(
                lifeline.LEFT,
                {
                    "pids": left_behind,
                    "commands": [proctable.command_line(pid)[:200] for pid in left_behind[:5]],
                },
            )
        survivors = self.wait_all_gone()
        if self.cgroup is not None and not survivors:
            cgroup.remove(self.cgroup)
        if survivors:
            print(
                f"===== hakit shim: processes {survivors} survived SIGKILL for "
                f"{_GONE_TIMEOUT:g} s (stuck in the kernel?) =====",
                flush=True,
            )
        return self.app_status


def _mirror(status: int) -> None:
    """Exit as the app did: the same code, or killed by the same signal."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the app's crash, not ours
        if number != signal.SIGKILL:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(number, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
        os.kill(os.getpid(), number)
        os._exit(128 + number)  # a signal whose default is to be ignored
    os._exit(os.waitstatus_to_exitcode(status))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hakit-shim", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the shim's end of the lifeline")
    parser.add_argument("--cgroup", default="", help="the app's cgroup v2 directory, if any")
    parser.add_argument("--threshold", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command to run")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    group: Path | None = Path(args.cgroup) if args.cgroup else None
    if group is not None and not cgroup.create(group):
        group = None
    shim = Shim(
        sock,
        args.command,
        group,
        lifeline.DeadlineKeeper(threshold=args.threshold, grace=args.grace),
    )
    os.set_blocking(shim.wake_w, False)
    os.set_blocking(shim.wake_r, False)
    signal.set_wakeup_fd(shim.wake_w)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)  # wakes select via the fd

    def forward(number: int, frame: object) -> None:
        # A stop sent to the shim (a service manager, a user) is meant for the app.
        if shim.app is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(shim.app.pid, number)

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, forward)
    try:
        status = shim.run()
    except OSError as error:
        if error.errno != errno.EINTR:
            shim.kill_all()
            shim.wait_all_gone()
        raise
    if shim.app is None:
        os._exit(127)
    sys.stdout.flush()
    _mirror(status)


if __name__ == "__main__":
    main()
