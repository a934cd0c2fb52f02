"""Failsafe mode's I/O (``[coordination] failsafe = true``; the decisions: hakit.policy.failsafe).

``FailsafeSide`` has two halves, one per role:

- **The active asks** (``run``, a loop of the agent): once its lease has gone
  unrenewed for a while, every renewal interval it POSTs ``/failsafe`` to every other
  node's admin API (hakit.operator.admin_api, the ``[admin]`` token) at once, each
  awaited for at most ``ask_timeout``, and lets ``judge_round`` decide; a complete round
  extends the serving deadline (``LeaseKeeper.extend_failsafe``: the watchdog thread
  and the shim are re-armed with it), an incomplete one leaves the deadline standing
  and names who did not confirm, for the fence at that deadline.
- **Every node answers** (``answer``, behind the admin API's ``/failsafe``): it reads
  the store itself (``store_check`` at most, on its store thread), then, in one step of
  the event loop, decides (``hakit.policy.failsafe.answer``) and, when it confirms,
  promises first (``Policy.hold_failsafe``): no lease until ``hold`` after it was asked.

Events: the active records ``failsafe: serving on N confirmations`` at the first
complete round of an outage and when the store answers again; a node that confirms
records ``no promotion: store unreachable`` once per outage, and one that refuses says
why. Records go through the store thread, which keeps retrying them for a while (a
store down for long loses some: the alerts, sent through the notifier, are not lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hakit.agent.lease import LeaseKeeper
from hakit.agent.storeio import StoreIO
from hakit.config import Config
from hakit.coord.base import Coordinator, Lease
from hakit.errors import CoordinationError
from hakit.history.facts import ASKER, CONFIRMED, FAILSAFE, MISSING
from hakit.history.kinds import AlertKind, EventKind
from hakit.operator.commands import OperatorError
from hakit.policy import Alert, Policy, Role
from hakit.policy.failsafe import (
    NO_PROMOTION,
    RECOVERED,
    REFUSED,
    SERVING,
    Answer,
    StoreRead,
    answer,
    failsafe_times,
    judge_round,
    promise_until,
    round_due,
)

log = logging.getLogger("hakit.agent")

PATH = "/failsafe"


def admin_url(host: str, port: int) -> str:
    """A node's admin API, as the CLI reaches it (hakit.operator.client)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "", "*") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


class FailsafeSide:
    """Failsafe mode on one node (see the module's docstring)."""

    def __init__(
        self,
        cfg: Config,
        node: str,
        coordinator: Coordinator,
        store: StoreIO,
        policy: Policy,
        lease: LeaseKeeper,
        *,
        token: str | None,
        monotonic: Callable[[], float],
        record: Callable[..., None],
        alert: Callable[[Alert], Awaitable[None]],
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.coordinator = coordinator
        self.store = store
        self.policy = policy
        self.lease = lease
        self.token = token
        self.monotonic = monotonic
        self._record = record
        self._alert = alert
        self.enabled = cfg.coordination.failsafe
        self.times = failsafe_times(
            cfg.coordination.lease_ttl,
            cfg.coordination.renew_interval,
            lease.timings.self_fence_margin,
        )
        self.others = [n for n in cfg.nodes if n.name != node]
        self._last_round = float("-inf")
        self._serving_since: float | None = None  # monotonic: first complete round of an outage
        self._rounds = 0  # complete rounds in this outage
        # When the store last came back (monotonic): a round within ``hold`` of it continues
        # that outage (a flapping or overloaded store), said and alerted once, not per flap.
        self._recovered_at = float("-inf")
        self._said_missing: tuple[str, ...] = ()  # who did not confirm, said once
        self._no_promotion_said = False  # this node said it will not promote (this outage)
        self._refused: tuple[str, int, str] | None = None  # the last refusal said
        self._client: Any = None  # httpx.AsyncClient, made on first use

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the active: rounds of confirmations ------------------------------------------------

    async def run(self) -> None:
        """The active's loop: a round whenever one is due (hakit.policy.failsafe.round_due)."""
        tick = self.times.every / 4
        while True:
            await asyncio.sleep(tick)
            await self.step()

    async def step(self) -> None:
        epoch = self.lease.epoch
        now = self.monotonic()
        if not epoch or self.policy.view().role is not Role.ACTIVE or self.lease.asking:
            self._serving_since = None
            return
        if self.lease.renewed_at > self._last_round and self._serving_since is not None:
            self._recovered(epoch, now)
        if not round_due(now, self.lease.renewed_at, self._last_round, self.times):
            return
        if now >= self.lease.lease_deadline:
            return  # past it: the deadline's own check fences
        self._last_round = now
        await self._round(epoch, now)

    async def _round(self, epoch: int, sent: float) -> None:
        names = [n.name for n in self.others]
        got = await asyncio.gather(
            *(self._ask(n.name, n.host, n.admin_port, epoch) for n in self.others)
        )
        answers: dict[str, Answer | str] = dict(zip(names, got, strict=True))
        verdict = judge_round(
            names, answers, sent=sent, deadline=self.lease.lease_deadline, times=self.times
        )
        if verdict.serve_until is not None:
            if not self.lease.extend_failsafe(epoch, verdict.serve_until):
                return
            self._said_missing = ()
            self._rounds += 1
            if self._serving_since is None:
                self._serving_since = sent
                if sent - self._recovered_at < self.times.hold:
                    log.info("failsafe: the store is unreachable again: %s", verdict.reason)
                    return
                data = {FAILSAFE: SERVING, CONFIRMED: list(verdict.confirmed)}
                self._record(EventKind.FAILSAFE, f"{self.node} {verdict.reason}", data=data)
                await self._alert(
                    Alert(
                        AlertKind.FAILSAFE,
                        f"{self.node} cannot reach the coordination store; {verdict.reason}: "
                        "no node promotes until the store answers again",
                    )
                )
            return
        if self.lease.epoch != epoch:
            return
        missing = dict(verdict.missing)
        self.lease.failsafe_missing = missing
        if tuple(missing) != self._said_missing:
            self._said_missing = tuple(missing)
            log.warning("failsafe round incomplete: %s", verdict.reason)

    def _recovered(self, epoch: int, now: float) -> None:
        """The store renewed the lease after an outage served on confirmations: say so."""
        since = self._serving_since
        assert since is not None
        self._serving_since = None
        flapped = now - self._recovered_at < self.times.hold
        self._recovered_at = now
        rounds, self._rounds = self._rounds, 0
        if flapped:
            log.info("failsafe: lease of epoch %d renewed in the store again", epoch)
            return
        self._record(
            EventKind.FAILSAFE,
            f"{self.node} renewed its lease of epoch {epoch} in the coordination store again "
            f"after serving {now - since:.1f} s on failsafe confirmations ({rounds} rounds)",
            data={FAILSAFE: RECOVERED, "seconds": round(now - since, 3), "rounds": rounds},
        )

    async def _ask(self, name: str, host: str, port: int | None, epoch: int) -> Answer | str:
        """One node's answer, or in words why none came."""
        if port is None:
            return "it has no admin_port"
        if self.token is None:
            return "no [admin] token to ask with"
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        url = admin_url(host, port) + PATH
        try:
            response = await self._client.post(
                url,
                json={"node": self.node, "epoch": epoch, "hold": self.times.hold},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.times.ask_timeout,
            )
        except httpx.TimeoutException:
            return f"its agent did not answer within {self.times.ask_timeout:.2f} s"
        except httpx.HTTPError as error:
            return f"its agent could not be reached ({type(error).__name__}: {error})"
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code != 200:
            return f"its agent answered {response.status_code}: {body.get('error', '')}".rstrip(
                ": "
            )
        return Answer(body.get("confirmed") is True, str(body.get("reason", "")))

    # --- every node: answering ------------------------------------------------------------

    async def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The admin API's ``POST /failsafe``: confirm (having promised) or say why not."""
        asked_at = self.monotonic()
        if not self.enabled:
            raise OperatorError(
                f"failsafe mode is off on {self.node} ([coordination] failsafe = false)"
            )
        asker, epoch = params.get("node"), params.get("epoch")
        if not isinstance(asker, str) or not isinstance(epoch, int) or isinstance(epoch, bool):
            raise OperatorError(
                'expected {"node": NAME, "epoch": EPOCH} from the active asking', status=400
            )
        if asker not in {n.name for n in self.cfg.nodes}:
            raise OperatorError(f"no node named {asker!r} in the config", status=404)
        if self.lease.epoch:
            # No need to read the store: this node leads.
            seen = StoreRead(reachable=True)
        else:
            seen = await self._read_store()
        # From here to the promise, no await: a takeover cannot start in between.
        decided = answer(
            asker,
            epoch,
            me=self.node,
            held_epoch=self.lease.epoch,
            store=seen,
        )
        if decided.confirm:
            until = promise_until(asked_at, self.times)
            self.policy.hold_failsafe(
                until, f"promised {asker} (epoch {epoch}) not to promote: {decided.reason}"
            )
            await self._said_no_promotion(asker, epoch, decided, seen)
        else:
            self._said_refusal(asker, epoch, decided)
        return {"node": self.node, "confirmed": decided.confirm, "reason": decided.reason}

    async def _read_store(self) -> StoreRead:
        now = self.monotonic()
        failing = self.store.writes_failing(now, self.times.store_check)
        try:
            lease: Lease | None = await asyncio.wait_for(
                self.store.call(self.coordinator.current_lease, what="read the lease (failsafe)"),
                self.times.store_check,
            )
        except TimeoutError:
            return StoreRead(
                reachable=False,
                error=f"no answer within {self.times.store_check:.2f} s",
                writes_failing=failing,
            )
        except CoordinationError as error:
            return StoreRead(reachable=False, error=str(error), writes_failing=failing)
        if lease is None:
            return StoreRead(reachable=True, writes_failing=failing)
        return StoreRead(
            reachable=True,
            holder=lease.holder,
            epoch=lease.epoch,
            valid=lease.valid,
            writes_failing=failing,
        )

    async def _said_no_promotion(
        self, asker: str, epoch: int, decided: Answer, seen: StoreRead
    ) -> None:
        if seen.reachable and not seen.writes_failing:
            self._no_promotion_said = False  # the store answers here: not an outage here
            return
        if self._no_promotion_said:
            return
        self._no_promotion_said = True
        words = (
            f"no promotion: store unreachable; {self.node} confirmed to {asker} (epoch "
            f"{epoch}) that it is not promoting ({decided.reason})"
        )
        self._record(
            EventKind.FAILSAFE, words, epoch=0, data={FAILSAFE: NO_PROMOTION, ASKER: asker}
        )
        await self._alert(Alert(AlertKind.FAILSAFE, words))

    def _said_refusal(self, asker: str, epoch: int, decided: Answer) -> None:
        key = (asker, epoch, decided.reason)
        if self._refused == key:
            return
        self._refused = key
        self._record(
            EventKind.FAILSAFE,
            f"{self.node} did not confirm to {asker} (epoch {epoch}): {decided.reason}",
            epoch=0,
            data={FAILSAFE: REFUSED, ASKER: asker, MISSING: {self.node: decided.reason}},
        )
