"""The mining loops of an invocation, and what one worker instance shares between them.

A unit of work: demo sleep -> GET {RNG_URL}/32*batch -> POST {HASHER_URL}/ -> the
coins (digests starting with "0") into the invocation's ledger, which flushes to
Redis about once a second. Loops are asyncio tasks; each has its own keep-alive
connections to rng and hasher.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import cast

from settings import UNIT, Settings
from telemetry import Telemetry
from tracing import Span
from upstream import AuthHeaders, Upstream, UpstreamError
from wallet import RECORD, Ledger, NotRecorded, Wallet

FLUSH_INTERVAL = 1.0
LATE = 1.0  # how far past its deadline a call in flight may run before it fails
STRAGGLE = 0.5  # then how long a loop may take to notice before it is cancelled
HEX_DIGITS = b"0123456789abcdef\n"


def _builtin_sha256() -> Callable[[bytes], hashlib._Hash]:
    """CPython's own SHA-256 (_sha2 from 3.12, _sha256 before) rather than OpenSSL's,
    which hashlib prefers: for 32-byte units its per-object cost is a fraction."""
    for name in ("_sha2", "_sha256"):
        try:
            return cast(Callable[[bytes], hashlib._Hash], import_module(name).sha256)
        except (ImportError, AttributeError):
            pass
    return hashlib.sha256


small_sha256 = _builtin_sha256()


class Busy(Exception):
    """This instance has no room for the invocation now (answered 429)."""


@dataclass
class Tally:
    """What an invocation found, for its summary."""

    hashes: int = 0
    coins: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {"rng": 0, "hasher": 0, "redis": 0})
    last_errors: dict[str, str] = field(default_factory=dict)  # kind -> latest message

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.last_errors[kind] = message[:300]


class Instance:
    """What one worker process shares between its concurrent invocations: a total
    of mining loops and of units in flight (so memory stays bounded whatever the
    requests ask), the coins held while Redis cannot take them, and SIGTERM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loops = 0
        self.units = 0
        self.ledgers: set[Ledger] = set()
        self.draining = asyncio.Event()

    def reserve(self, concurrency: int, batch: int) -> None:
        s = self.settings
        if self.draining.is_set():
            raise Busy("this worker instance is shutting down (SIGTERM); try another")
        if self.loops + concurrency > s.max_loops:
            raise Busy(f"this worker instance runs {self.loops} of its {s.max_loops} mining "
                       f"loops (WORKER_MAX_LOOPS); {concurrency} more do not fit")
        if self.units + concurrency * batch > s.max_units_in_flight:
            raise Busy(f"this worker instance has {self.units} of its {s.max_units_in_flight} "
                       f"units in flight (WORKER_MAX_UNITS_IN_FLIGHT); "
                       f"{concurrency} x {batch} more do not fit")
        self.loops += concurrency
        self.units += concurrency * batch

    def release(self, concurrency: int, batch: int) -> None:
        self.loops -= concurrency
        self.units -= concurrency * batch

    def coins_full(self) -> bool:
        held = sum(ledger.held_coins for ledger in self.ledgers)
        return held >= self.settings.max_unrecorded_coins


def verified_coins(data: bytes, text: bytes, batch: int, sample: int) -> bytes:
    """The coins of one hasher answer, as the ledger's 96-byte records (digest, then
    the unit's random bytes), after checking the answer: its shape (`batch`
    lowercase hex digests, newline-separated), every coin it claims, and `sample`
    digests picked at random, so a hasher that invents digests is caught, not just
    one that invents coins. Raises UpstreamError; the batch is then dropped."""
    if len(text) != 65 * batch - 1 or text[64::65] != b"\n" * (batch - 1):
        raise UpstreamError(f"hasher: answer of {len(text)} bytes is not {batch} digests")
    if text.translate(None, HEX_DIGITS):
        raise UpstreamError("hasher: answer holds characters other than lowercase hex")
    firsts = text[::65]
    coins = []
    i = firsts.find(b"0")
    while i >= 0:
        coins.append(i)
        i = firsts.find(b"0", i + 1)
    checked = range(batch) if batch <= sample else random.sample(range(batch), sample)
    for i in (*coins, *checked):
        if small_sha256(data[i * UNIT : (i + 1) * UNIT]).hexdigest().encode() \
                != text[i * 65 : i * 65 + 64]:
            raise UpstreamError("hasher: answered a wrong digest; batch dropped")
    return b"".join([text[i * 65 : i * 65 + 64] + data[i * UNIT : (i + 1) * UNIT]
                     for i in coins])


@dataclass
class Invocation:
    settings: Settings
    instance: Instance
    seconds: float
    concurrency: int
    batch: int
    auth: AuthHeaders | None = None
    span: Span | None = None  # the invocation's, the parent of its rng and hasher calls
    clock: Callable[[], float] = time.monotonic
    tally: Tally = field(default_factory=Tally)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # loops: stop now
    reason: str = ""  # why mining stopped before its time

    async def run(self) -> tuple[int, dict[str, object]]:
        """Mine, record, and answer (HTTP status, JSON summary)."""
        self.instance.reserve(self.concurrency, self.batch)
        started = self.clock()
        telemetry = Telemetry(self.concurrency, self.batch)
        ledger = Ledger(Wallet(self.settings.redis_url), telemetry)
        self.instance.ledgers.add(ledger)
        try:
            await self._mine(ledger, started + self.seconds)
            recorded = await self._record(ledger)
        finally:
            self.instance.ledgers.discard(ledger)
            self.instance.release(self.concurrency, self.batch)
            await ledger.wallet.close()
        summary: dict[str, object] = {
            "invocation": telemetry.invocation,  # as in its brkcoin:stats lines
            "hashes": self.tally.hashes,
            "coins": self.tally.coins,
            "new_coins": ledger.new_coins,
            "errors": self.tally.errors,
            "last_errors": self.tally.last_errors,
            "seconds": round(self.clock() - started, 3),
            "concurrency": self.concurrency,
            "batch": self.batch,
        }
        if self.reason:
            summary["stopped"] = self.reason
        if recorded:
            return 200, summary
        summary["error"] = ("counts not recorded in Redis: "
                            + self.tally.last_errors.get("redis", "unknown"))
        summary["unrecorded"] = ledger.unrecorded()
        summary["in_doubt"] = ledger.in_doubt()
        return 503, summary

    async def _mine(self, ledger: Ledger, deadline: float) -> None:
        loops = {asyncio.create_task(self._loop(ledger, deadline))
                 for _ in range(self.concurrency)}
        flusher = asyncio.create_task(self._flush_every_second(ledger))
        drained = asyncio.create_task(self._until_draining())
        try:
            hard_stop = deadline + LATE + STRAGGLE
            while loops and not self.stopped.is_set():
                _, loops = await asyncio.wait(
                    loops | {drained}, timeout=max(0.0, hard_stop - self.clock()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                loops.discard(drained)
                if drained.done():
                    self.stop("SIGTERM: the instance is shutting down")
                elif self.clock() >= hard_stop:
                    self.stop("")  # calls still in flight past the deadline are dropped
        finally:
            for task in (*loops, drained):
                task.cancel()
            await asyncio.gather(*loops, drained, return_exceptions=True)
            await self._stop_flusher(flusher)

    async def _until_draining(self) -> None:
        await self.instance.draining.wait()

    def stop(self, reason: str) -> None:
        if reason and not self.reason:
            self.reason = reason
        self.stopped.set()

    async def _flush_every_second(self, ledger: Ledger) -> None:
        while not self.stopped.is_set():
            try:
                await asyncio.wait_for(self.stopped.wait(), FLUSH_INTERVAL)
            except TimeoutError:
                pass
            if self.stopped.is_set():
                return
            await self._try_flush(ledger)

    async def _stop_flusher(self, flusher: asyncio.Task[None]) -> None:
        # A flush under way is let finish (bounded by the Redis timeout) rather than
        # cancelled, which would leave it in doubt for nothing.
        self.stopped.set()
        await flusher

    async def _try_flush(self, ledger: Ledger) -> bool:
        try:
            await ledger.flush()
            return True
        except NotRecorded as e:
            self.tally.error("redis", str(e))
            ledger.telemetry.redis_errors += 1
            return False

    async def _record(self, ledger: Ledger) -> bool:
        draining = self.instance.draining.is_set()
        grace = self.settings.drain_grace if draining else self.settings.flush_grace
        give_up = self.clock() + grace
        while not await self._try_flush(ledger) and ledger.holds_counts():
            if self.clock() >= give_up:
                return False
            await asyncio.sleep(min(0.5, max(0.0, give_up - self.clock())))
        return True

    async def _loop(self, ledger: Ledger, deadline: float) -> None:
        s, batch, telemetry = self.settings, self.batch, ledger.telemetry
        traced = {"traceparent": self.span.traceparent} if self.span else None
        rng = Upstream("rng", s.rng_url, s.http_timeout, self.auth, traced)
        hasher = Upstream("hasher", s.hasher_url, s.http_timeout, self.auth, traced)
        size = UNIT * batch
        rng_path = f"/{size}"
        hasher_path = "/" if batch == 1 else f"/?chunk={UNIT}"  # batch=1: the original
        failures = 0
        unit = 0.0  # how long this loop's units take lately (a moving average)
        try:
            # A unit is begun only if it can end by the deadline, as the last ones
            # did: the invocation ends on time and the next tick need not wait.
            while not self.stopped.is_set() and self.clock() + unit < deadline:
                began = self.clock()
                if s.delay:
                    await asyncio.sleep(min(s.delay, max(0.0, deadline - self.clock())))
                kind, started = "rng", self.clock()
                try:
                    # Each call may run to the deadline and a little past it, no more.
                    left = deadline + LATE - self.clock()
                    data = await rng.call("GET", rng_path, limit=size,
                                          timeout=min(s.http_timeout, left))
                    if len(data) != size:
                        raise UpstreamError(f"rng: sent {len(data)} bytes, wanted {size}")
                    kind, middle = "hasher", self.clock()
                    telemetry.call("rng", middle - started, True)
                    left = deadline + LATE - self.clock()
                    text = await hasher.call("POST", hasher_path, data, limit=65 * batch - 1,
                                             timeout=min(s.http_timeout, left))
                    coins = verified_coins(data, text, batch, s.check_sample)
                    telemetry.call("hasher", self.clock() - middle, True)
                except UpstreamError as e:
                    telemetry.call(kind, 0.0, False)
                    self.tally.error(kind, str(e))
                    failures += 1
                    pause = min(1.0, 0.05 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
                    await asyncio.sleep(min(pause, max(0.0, deadline - self.clock())))
                    continue
                failures = 0
                unit = 0.7 * unit + 0.3 * (self.clock() - began) if unit else self.clock() - began
                self.tally.hashes += batch
                telemetry.hashes += batch
                self.tally.coins += len(coins) // RECORD
                ledger.add(batch, coins)
                if coins and self.instance.coins_full():
                    self.stop(f"{self.settings.max_unrecorded_coins} coins held unrecorded "
                              "(WORKER_MAX_UNRECORDED_COINS): mining stopped until Redis "
                              "takes them")
        finally:
            rng.close()
            hasher.close()
