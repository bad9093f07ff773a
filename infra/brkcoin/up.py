"""`brkcoin up`: the whole system on this machine, on the local platform, mining
on a schedule, with a live status line; `brkcoin scale` while it runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import redis
import redis.asyncio

from brkcoin import scaling_options, wallet
from brkcoin.layout import FUNCTIONS, MAX_WORKERS
from brkcoin.platform import mining_metrics, runfile
from brkcoin.platform.processes import PortInUse, StartFailed
from brkcoin.platform.redis_server import RedisUnavailable
from brkcoin.platform.run import Stopped, serve
from brkcoin.platform.scheduler import (
    BadSchedule,
    Cron,
    Interval,
    Scheduler,
    WorkerTrigger,
    parse_every,
)
from brkcoin.platform.supervisor import Platform, redacted

T = TypeVar("T")
MAX_CONTROL = 64 * 1024  # bytes of control.json read: `brkcoin scale` writes a few dozen
OPEN_REDIS = "redis has no password (--redis-no-password)"
DATA_DIR = Path(os.environ.get("BRKCOIN_DATA", ".brkcoin"))
LESSON_DELAYS = {"RNG_DELAY": "0.1", "HASHER_DELAY": "0.1", "WORKER_DELAY": "0.1"}
# The local platform's own defaults over the spec: the page stays warm (min 1),
# so opening it never waits for a cold start; every other function may go to zero.
LOCAL_BOUNDS = {"webui": (1, FUNCTIONS["webui"].max_instances)}
AUTO = "auto"  # `brkcoin scale rng=auto`: back to the autoscaler


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", help="run the whole system locally, mining on a schedule",
        description="Run every function on the local platform (a front door per function, "
                    "N instances behind it), the embedded Redis and the scheduler.")
    up.add_argument("--host", default="127.0.0.1", help="address every server binds")
    up.add_argument("--data-dir", type=Path, default=DATA_DIR, help="Redis AOF, logs (.brkcoin)")
    for name, function in FUNCTIONS.items():
        up.add_argument(f"--{name}-port", type=int, default=function.port, metavar="PORT")
    up.add_argument("--redis-port", type=int, default=6380, metavar="PORT",
                    help="embedded Redis port, when REDIS_URL is unset (6380)")
    up.add_argument("--metrics-port", type=int, default=9464, metavar="PORT",
                    help="the platform's Prometheus metrics, at /metrics (9464)")
    up.add_argument("--redis-no-password", action="store_true",
                    help="run the embedded Redis with no password, for DockerCoins' own "
                         "worker and web UI (any local user can then write the wallet)")
    when = up.add_mutually_exclusive_group()
    when.add_argument("--every", default="10s", help="local interval between ticks (10s)")
    when.add_argument("--schedule", metavar="CRON", help='cron expression, e.g. "* * * * *"')
    up.add_argument("--scale", type=assignments, default={}, metavar="NAME=N,...",
                    help="pin rng, hasher, webui at N instances (else they autoscale); "
                         "for worker: invocations per tick (0 pauses the schedule)")
    up.add_argument("--workers", type=int, help="invocations per tick (= --scale worker=N)")
    up.add_argument("--autoscale", action="append", default=[],
                    metavar="NAME:KEY=VALUE,...",
                    help="the autoscaler's settings, by Knative's names: class (kpa, cpu), "
                         "window, panic-window-percentage, panic-threshold-percentage, "
                         "target-utilization-percentage, min-scale, max-scale, "
                         "scale-to-zero-grace-period, max-scale-up-rate, max-scale-down-rate, "
                         "tick-interval, cpu-target-percentage; NAME all for every function")
    up.add_argument("--instance-concurrency", type=assignments, default={},
                    metavar="NAME=N,...",
                    help="requests one instance serves at once (Cloud Run's --concurrency); "
                         "rng=1 is the original single-threaded rng")
    up.add_argument("--lesson", action="store_true",
                    help="the DockerCoins lesson's shape: one rng instance serving one "
                         "request at a time, demo delays 0.1 s, one worker")
    up.add_argument("--concurrency", type=int, help="mining loops inside each invocation")
    up.add_argument("--batch", type=int, help="units per rng/hasher call (1: the original)")
    up.add_argument("--timeout", type=durations, default={}, metavar="NAME=S,...",
                    help="seconds a request may take (the spec's timeout; for the worker, "
                         "a minute beyond its tick's mining)")
    up.add_argument("--overlap", choices=("skip", "allow"), default="skip",
                    help="a tick while invocations still run: skip it (default) or allow")
    up.set_defaults(run=run_up)

    scale = sub.add_parser("scale", help="scale a running `brkcoin up`: rng=4 worker=10 ...",
                           description="rng, hasher, webui: pin at N instances, or NAME=auto "
                                       "to hand back to the autoscaler; worker: invocations "
                                       "per tick, 0 pauses the schedule (its instances "
                                       "always autoscale).")
    scale.add_argument("scale", nargs="+", type=assignments, metavar="NAME=N")
    scale.add_argument("--data-dir", type=Path, default=DATA_DIR)
    scale.set_defaults(run=run_scale)


def _per_function(text: str, read: Callable[[str, str], T]) -> dict[str, T]:
    """'rng=2,hasher=3' -> {'rng': read('rng', '2'), ...}, each name checked."""
    result = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in FUNCTIONS:
            raise argparse.ArgumentTypeError(
                f"no function {_shown(name)}; the functions are {', '.join(FUNCTIONS)}")
        result[name] = read(name, value)
    return result


def _count(name: str, number: str) -> int | str:
    low, high = bound(name)
    if number == AUTO and name != "worker":
        return AUTO
    if not (number.isascii() and number.isdigit() and len(number) <= 6
            and low <= int(number) <= high):
        raise argparse.ArgumentTypeError(f"{name}= takes {_allowed(name)}, got {_shown(number)}")
    return int(number)


def _allowed(name: str) -> str:
    low, high = bound(name)
    return f"a whole number from {low} to {high}" + ("" if name == "worker" else " or auto")


def _seconds(name: str, number: str) -> float:
    try:
        seconds = float(number)
    except ValueError:
        seconds = float("nan")
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{name}= takes seconds from 0.1 to 3600, "
                                         f"got {_shown(number)}")
    return seconds


def assignments(text: str) -> dict[str, int | str]:
    """'rng=2,hasher=auto,worker=10' -> {'rng': 2, 'hasher': 'auto', 'worker': 10}:
    instances (or back to the autoscaler), or invocations per tick."""
    return _per_function(text, _count)


def durations(text: str) -> dict[str, float]:
    """'rng=3,hasher=2.5' -> {'rng': 3.0, 'hasher': 2.5}: request timeouts in seconds."""
    return _per_function(text, _seconds)


def worker_settings() -> ModuleType:
    """The worker's own settings module (functions/worker/settings.py): its bounds
    are the ones `up` checks, so they are written down once."""
    return worker_module("settings")


def worker_module(name: str) -> ModuleType:
    """A module of the worker's folder (its settings, its trace context), loaded
    from there: written down once, for the worker and the platform."""
    path = FUNCTIONS["worker"].folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"brkcoin_worker_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def check_inputs(fanout: int, concurrency: int | None, batch: int | None) -> str:
    """'' when the worker would take these inputs, else why not, in a line."""
    module = worker_settings()
    try:
        settings = module.Settings.from_env(os.environ)
    except module.ConfigError as e:
        return str(e)
    if not 0 <= fanout <= MAX_WORKERS:
        return (f"--workers takes 0 (paused) to {MAX_WORKERS} invocations per tick (the "
                f"worker's concurrency x its max instances), not {fanout}")
    if concurrency is not None and not 1 <= concurrency <= settings.max_concurrency:
        return (f"--concurrency must be from 1 to {settings.max_concurrency} "
                f"(WORKER_MAX_CONCURRENCY), not {concurrency}")
    if batch is not None and not 1 <= batch <= module.MAX_BATCH:
        return f"--batch must be from 1 to {module.MAX_BATCH}, not {batch}"
    units = (concurrency or 1) * (batch or 1)
    if units > settings.max_units_in_flight:
        return (f"--concurrency x --batch must be at most {settings.max_units_in_flight} "
                f"(WORKER_MAX_UNITS_IN_FLIGHT), not {units}")
    return ""


def _fail(message: str, code: int = 2) -> int:
    print(f"brkcoin: {message}", file=sys.stderr)
    return code


def run_up(args: argparse.Namespace) -> int:
    asked = dict(args.scale)
    concurrency = dict(args.instance_concurrency)
    env: dict[str, str] = {}
    if args.lesson:
        asked = {"rng": 1, "worker": 1} | asked
        concurrency = {"rng": 1} | concurrency
        env = dict(LESSON_DELAYS)
    if args.workers is not None:
        asked["worker"] = args.workers
    fanout = int(asked.pop("worker", 1))
    scale = {name: int(n) for name, n in asked.items() if n != AUTO}  # pinned
    try:
        autoscaling = scaling_options.parse(args.autoscale, LOCAL_BOUNDS)
    except argparse.ArgumentTypeError as e:
        return _fail(str(e))
    problem = check_inputs(fanout, args.concurrency, args.batch)
    if problem:
        return _fail(problem)
    try:
        schedule: Interval | Cron = (Cron(args.schedule) if args.schedule
                                     else parse_every(args.every))
    except BadSchedule as e:
        return _fail(str(e))
    owner = runfile.running_owner(args.data_dir)
    if owner:
        return _fail(f"another `brkcoin up` (pid {owner}) is using {args.data_dir}; "
                     "stop it first, or use another --data-dir", 1)
    for entry in runfile.end_leftovers(args.data_dir):
        print(f"brkcoin: ended a leftover {entry['name']} (pid {entry['pid']}) "
              "of a run that did not clean up")

    ports = {n: getattr(args, f"{n}_port") for n in FUNCTIONS}
    platform = Platform(args.data_dir, args.host, ports, args.redis_port,
                        os.environ.get("REDIS_URL"), env, scale, concurrency,
                        timeouts=dict(args.timeout),
                        redis_password=not args.redis_no_password,
                        scaling=autoscaling.scaling, bounds=autoscaling.bounds,
                        metrics_port=args.metrics_port)
    inputs = {n: getattr(args, n) for n in ("concurrency", "batch") if getattr(args, n)}
    settings = worker_settings().Settings.from_env(os.environ)
    tracing = worker_module("tracing")  # each tick a trace, sampled as OTEL_TRACES_SAMPLER says
    trigger = WorkerTrigger(platform.urls["worker"], fanout, inputs,
                            os.environ.get("WORKER_TOKEN", ""),
                            log=_logger(platform.logs / "scheduler.log", platform),
                            overlap=args.overlap, max_seconds=settings.max_seconds,
                            new_trace=lambda: tick_trace(tracing))
    if "worker" not in args.timeout:  # an invocation mines for most of a tick
        platform.services["worker"].door.rules.request_timeout = FUNCTIONS["worker"].timeout_for(
            trigger.mining_seconds(longest_tick(schedule)))
    scheduler = Scheduler(schedule, trigger)
    platform.report = lambda: {"scheduler": _scheduler_state(scheduler, trigger, schedule)}
    status = Status(platform, scheduler, trigger, schedule, args.data_dir)

    async def forever() -> None:
        status.announce()
        await asyncio.Event().wait()

    try:
        serve(platform, scheduler, forever, status.beat)
    except (PortInUse, StartFailed, RedisUnavailable) as e:
        return _fail(str(e), 1)
    except Stopped:
        pass
    finally:
        print("\nbrkcoin: stopping...", flush=True)
        runfile.remove(args.data_dir, runfile.STACK, runfile.STATUS, runfile.CONTROL)
        print("brkcoin: stopped every process it started.", flush=True)
    return 0


def tick_trace(tracing: ModuleType) -> str:
    """A tick's trace: its span (the scheduler's, ended as the tick fires its
    invocations, exported when OTLP is set) as the traceparent they carry."""
    span = tracing.start(None, name="tick", service="scheduler")
    span.end()
    return str(span.traceparent)


def longest_tick(schedule: Interval | Cron, ticks: int = 10) -> float:
    """The longest time between the next few ticks, in seconds."""
    tick = schedule.first(datetime.now(UTC))
    longest = 0.0
    for _ in range(ticks):
        following = schedule.next_after(tick)
        longest = max(longest, (following - tick).total_seconds())
        tick = following
    return longest


def _scheduler_state(scheduler: Scheduler, trigger: WorkerTrigger,
                     schedule: object) -> dict[str, Any]:
    return trigger.state() | {"schedule": str(schedule), "failures": scheduler.failures,
                              "last_failure": scheduler.last_failure}


def _logger(path: Path, platform: Platform) -> Callable[[str], None]:
    def log(line: str) -> None:
        platform.disk.append("the scheduler's log", path,
                             f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}")
    return log


class Status:
    """Each beat: apply `brkcoin scale`, record the state for `brkcoin status`, and
    show the status line."""

    def __init__(self, platform: Platform, scheduler: Scheduler, trigger: WorkerTrigger,
                 schedule: object, data_dir: Path) -> None:
        self.platform, self.scheduler, self.trigger = platform, scheduler, trigger
        self.schedule, self.data_dir = schedule, data_dir
        self.wallet = redis.asyncio.Redis.from_url(platform.redis_url, socket_timeout=1,
                                                   socket_connect_timeout=1)
        self.meter = wallet.RateMeter()
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0
        self.recorded: list[tuple[str, int]] = []
        self.mining: mining_metrics.Wallet | None = None  # the last scrape's reading
        platform.metrics.registry.register(mining_metrics.MiningCollector(
            lambda: self.mining, lambda: trigger.lost))
        platform.metrics.before_scrape.append(self.read_wallet)

    def announce(self) -> None:
        platform, trigger = self.platform, self.trigger
        self.record()  # once it says it is up, `brkcoin status` finds it
        print("brkcoin is up:")
        for name, url in platform.urls.items():
            print(f"  {name:7} {url}" + ("   <- open this" if name == "webui" else ""))
        embedded = f"  (embedded, AOF in {platform.redis.data_dir})" if platform.redis else ""
        print(f"  redis   {redacted(platform.redis_url)}{embedded}")
        if platform.redis and not platform.redis.secured:
            print(f"  warning: {OPEN_REDIS}")
        print(f"  metrics http://{platform.host}:{platform.metrics_port}/metrics   (Prometheus)")
        print(f"  schedule {self.schedule}, {trigger.fanout} worker invocation(s) per tick")
        print(f"  logs    {platform.logs}    Ctrl-C stops everything", flush=True)

    async def beat(self) -> None:
        platform, disk = self.platform, self.platform.disk
        self.apply_control()
        state = platform.state() | {"scheduler": _scheduler_state(
            self.scheduler, self.trigger, self.schedule)}
        try:
            reading = await wallet.read_async(self.wallet)
            state["wallet"] = {**reading, "rate": round(self.meter.add(reading["now"],
                                                                        reading["hashes"]), 2)}
        except (redis.RedisError, OSError, TimeoutError, ValueError):
            state["wallet"] = None
        disk.write("status.json", lambda: runfile.write(self.data_dir, runfile.STATUS, state))
        self.record()
        line = status_line(state)
        if self.tty:
            print(f"\r{line}\033[K", end="", flush=True)
        elif time.monotonic() - self.last_print >= 10:
            print(line, flush=True)
            self.last_print = time.monotonic()

    async def read_wallet(self) -> None:
        """The wallet and its totals now, for a scrape (None: no answer)."""
        try:
            self.mining = await mining_metrics.read(self.wallet)
        except (redis.RedisError, OSError, TimeoutError, ValueError):
            self.mining = None

    def record(self) -> None:
        """stack.json, when an instance came or went."""
        platform = self.platform
        if (pids := platform.pids()) != self.recorded:
            if platform.disk.write("stack.json", lambda: runfile.record(
                    self.data_dir, platform.urls, platform.redis_url, pids)):
                self.recorded = pids

    def apply_control(self) -> None:
        """What `brkcoin scale` asked for; a bad request is said and ignored, and
        the last good scale stays."""
        path = self.data_dir / runfile.CONTROL
        try:
            with open(path, "rb") as asked_file:
                raw = asked_file.read(MAX_CONTROL + 1)
        except OSError:
            return  # nothing asked (or unreadable: it is tried again)
        self.platform.disk.write("control.json", lambda: path.unlink(missing_ok=True))
        try:
            if len(raw) > MAX_CONTROL:
                raise ValueError(f"over {MAX_CONTROL} bytes")
            asked = json.loads(raw)
            if not isinstance(asked, dict):
                raise ValueError(f"not a JSON object: {_shown(asked)}")
            wanted = checked_scale(asked.get("scale"))
        except ValueError as e:  # JSON's errors included
            self.trigger.problem = f"control.json ignored: {e}"
            self.trigger.log(f"control.json ignored: {e}")
            return
        for name, n in wanted.items():
            if name == "worker":
                self.trigger.fanout = int(n)  # the next tick sends that many; 0 pauses
            elif n == AUTO:
                self.platform.autoscale(name)
            else:
                self.platform.scale(name, int(n))


def checked_scale(wanted: object) -> dict[str, int | str]:
    """{"rng": 4, "hasher": "auto", "worker": 10} from control.json, every name and
    bound checked."""
    if not isinstance(wanted, dict) or not wanted:
        raise ValueError(f"'scale' must be an object of NAME: N, got {_shown(wanted)}")
    result: dict[str, int | str] = {}
    for name, n in wanted.items():
        if name not in FUNCTIONS:
            raise ValueError(f"no function {_shown(name)}; the functions are "
                             f"{', '.join(FUNCTIONS)}")
        low, high = bound(name)
        if n == AUTO and name != "worker":
            result[name] = AUTO
            continue
        if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= high:
            raise ValueError(f"{name} takes {_allowed(name)}, got {_shown(n)}")
        result[name] = n
    return result


def bound(name: str) -> tuple[int, int]:
    """What a scale may ask: instances, or for the worker invocations per tick (0
    pauses the schedule)."""
    return (0, MAX_WORKERS) if name == "worker" else (1, FUNCTIONS[name].max_instances)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def status_line(state: dict[str, Any]) -> str:
    """One line: speed, totals, each function's instances (and line), the ticks."""
    money = state.get("wallet")
    parts = [f"{money['rate']:8.1f} hashes/s {money['hashes']:>12,} hashes "
             f"{money['coins']:>9,} coins" if money else "redis unreachable"]
    for name, f in state["functions"].items():
        shown = f"{name} {f['instances']}"
        if f.get("wanted", f["instances"]) != f["instances"]:
            shown += f"/{f['wanted']}"
        if f["concurrency"] and name != "worker":
            shown += f"x{f['concurrency']}"
        if f["queued"]:
            shown += f" ({f['queued']} waiting)"
        if f["restarts"]:
            shown += f" restarted {f['restarts']}"
        parts.append(shown)
    scheduler = state["scheduler"]
    ticks = f"{scheduler['fanout']}/tick" if scheduler["fanout"] else "schedule paused"
    if scheduler["skipped"]:
        ticks += f", {scheduler['skipped']} skipped"
    if scheduler["problem"]:
        ticks += f", last {scheduler['problem'][:60]}"
    parts.append(ticks)
    if not state["redis"].get("password", True):
        parts.append(OPEN_REDIS)
    disk = state.get("disk") or {}
    if disk.get("failed_writes"):
        parts.append(f"{disk['failed_writes']} failed writes, last {disk['last_failure'][:60]}")
    return " | ".join(parts)


def run_scale(args: argparse.Namespace) -> int:
    wanted: dict[str, int | str] = {}
    for each in args.scale:
        wanted.update(each)
    owner = runfile.running_owner(args.data_dir)
    if not owner:
        return _fail(f"no `brkcoin up` is running with data folder {args.data_dir}")
    runfile.write(args.data_dir, runfile.CONTROL, {"scale": wanted})
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        state = runfile.read(args.data_dir, runfile.STATUS)
        if _reached(state, wanted):
            print(status_line(state))
            return 0
        time.sleep(0.25)
    return _fail("the stack did not reach that scale within 60 s; see `brkcoin status`", 1)


def _reached(state: dict[str, Any], wanted: dict[str, int | str]) -> bool:
    if not state:
        return False
    for name, n in wanted.items():
        function = state["functions"][name]
        if name == "worker":
            if state["scheduler"]["fanout"] != n:
                return False
        elif n == AUTO:
            if not function.get("autoscaled"):
                return False
        elif function["instances"] != n or function.get("autoscaled"):
            return False
    return True

