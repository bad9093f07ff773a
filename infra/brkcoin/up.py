"""`brkcoin up`: the whole system on this machine, on the local platform, mining
on a schedule, with a live status line; `brkcoin scale` while it runs."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import redis

from brkcoin import runfile, wallet
from brkcoin.layout import FUNCTIONS
from brkcoin.platform import Platform
from brkcoin.processes import PortInUse, StartFailed
from brkcoin.redis_server import RedisUnavailable
from brkcoin.scheduler import BadSchedule, Cron, Interval, Scheduler, WorkerTrigger, parse_every

DATA_DIR = Path(os.environ.get("BRKCOIN_DATA", ".brkcoin"))
LESSON_DELAYS = {"RNG_DELAY": "0.1", "HASHER_DELAY": "0.1", "WORKER_DELAY": "0.1"}


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
    when = up.add_mutually_exclusive_group()
    when.add_argument("--every", default="10s", help="local interval between ticks (10s)")
    when.add_argument("--schedule", metavar="CRON", help='cron expression, e.g. "* * * * *"')
    up.add_argument("--scale", type=assignments, default={}, metavar="NAME=N,...",
                    help="instances of rng, hasher, webui; for worker: invocations per tick")
    up.add_argument("--workers", type=int, help="invocations per tick (= --scale worker=N)")
    up.add_argument("--instance-concurrency", type=assignments, default={},
                    metavar="NAME=N,...",
                    help="requests one instance serves at once (Cloud Run's --concurrency); "
                         "rng=1 is the original single-threaded rng")
    up.add_argument("--lesson", action="store_true",
                    help="the DockerCoins lesson's shape: one rng instance serving one "
                         "request at a time, demo delays 0.1 s, one worker")
    up.add_argument("--concurrency", type=int, help="mining loops inside each invocation")
    up.add_argument("--batch", type=int, help="units per rng/hasher call (1: the original)")
    up.add_argument("--overlap", choices=("skip", "allow"), default="skip",
                    help="a tick while invocations still run: skip it (default) or allow")
    up.set_defaults(run=run_up)

    scale = sub.add_parser("scale", help="scale a running `brkcoin up`: rng=4 worker=10 ...",
                           description="rng, hasher, webui: instances; worker: invocations "
                                       "per tick (its instances follow the load).")
    scale.add_argument("scale", nargs="+", type=assignments, metavar="NAME=N")
    scale.add_argument("--data-dir", type=Path, default=DATA_DIR)
    scale.set_defaults(run=run_scale)


def assignments(text: str) -> dict[str, int]:
    """'rng=2,hasher=3' -> {'rng': 2, 'hasher': 3}, names and numbers checked."""
    result = {}
    for item in filter(None, text.split(",")):
        name, _, number = item.partition("=")
        if name not in FUNCTIONS:
            raise argparse.ArgumentTypeError(
                f"no function {name!r}; the functions are {', '.join(FUNCTIONS)}")
        if not (number.isdigit() and int(number) >= 1):
            raise argparse.ArgumentTypeError(f"{name}= takes a whole number from 1, "
                                             f"got {number!r}")
        result[name] = int(number)
    return result


def worker_settings() -> ModuleType:
    """The worker's own settings module (functions/worker/settings.py): its bounds
    are the ones `up` checks, so they are written down once."""
    path = FUNCTIONS["worker"].folder / "settings.py"
    spec = importlib.util.spec_from_file_location("brkcoin_worker_settings", path)
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
    if fanout < 1:
        return f"--workers takes 1 or more invocations per tick, not {fanout}"
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
    scale = dict(args.scale)
    concurrency = dict(args.instance_concurrency)
    env: dict[str, str] = {}
    if args.lesson:
        scale = {"rng": 1, "worker": 1} | scale
        concurrency = {"rng": 1} | concurrency
        env = dict(LESSON_DELAYS)
    if args.workers is not None:
        scale["worker"] = args.workers
    fanout = scale.pop("worker", 1)
    problem = check_inputs(fanout, args.concurrency, args.batch)
    if problem:
        return _fail(problem)
    try:
        schedule: Interval | Cron = (Cron(args.schedule) if args.schedule
                                     else parse_every(args.every))
    except BadSchedule as e:
        return _fail(str(e))
    for name, n in scale.items():
        if n > FUNCTIONS[name].max_instances:
            return _fail(f"{name} takes at most {FUNCTIONS[name].max_instances} instances")
    owner = runfile.running_owner(args.data_dir)
    if owner:
        return _fail(f"another `brkcoin up` (pid {owner}) is using {args.data_dir}; "
                     "stop it first, or use another --data-dir", 1)
    for entry in runfile.end_leftovers(args.data_dir):
        print(f"brkcoin: ended a leftover {entry['name']} (pid {entry['pid']}) "
              "of a run that did not clean up")

    _stop_on_signals()
    ports = {n: getattr(args, f"{n}_port") for n in FUNCTIONS}
    platform = Platform(args.data_dir, args.host, ports, args.redis_port,
                        os.environ.get("REDIS_URL"), env, scale, concurrency)
    try:
        platform.start()
    except (PortInUse, StartFailed, RedisUnavailable) as e:
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        return 130
    runfile.record(args.data_dir, platform.urls, platform.redis_url, platform.pids())
    platform.expected["worker"] = fanout
    inputs = {n: getattr(args, n) for n in ("concurrency", "batch") if getattr(args, n)}
    trigger = WorkerTrigger(platform.urls["worker"], fanout, inputs,
                            os.environ.get("WORKER_TOKEN", ""),
                            log=_logger(platform.logs / "scheduler.log"), overlap=args.overlap)
    scheduler = Scheduler(schedule, trigger)
    platform.report = lambda: {"scheduler": trigger.state() | {"schedule": str(schedule)}}
    threading.Thread(target=scheduler.run, daemon=True, name="scheduler").start()
    _announce(platform, schedule, trigger)
    try:
        _run(platform, trigger, schedule, args.data_dir)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nbrkcoin: stopping...", flush=True)
        scheduler.stop()
        platform.stop()
        runfile.remove(args.data_dir, runfile.STACK, runfile.STATUS, runfile.CONTROL)
        print("brkcoin: stopped every process it started.")
    return 0


def _stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) stop the stack, each once.
    SIGINT explicitly: a script's background job starts with it ignored."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(each, signal.SIG_IGN)  # one clean stop, however many signals
        raise KeyboardInterrupt

    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, interrupt)


def _logger(path: Path) -> Callable[[str], None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock, open(path, "a") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    return log


def _announce(platform: Platform, schedule: object, trigger: WorkerTrigger) -> None:
    print("brkcoin is up:")
    for name, url in platform.urls.items():
        print(f"  {name:7} {url}" + ("   <- open this" if name == "webui" else ""))
    embedded = f"  (embedded, AOF in {platform.redis.data_dir})" if platform.redis else ""
    print(f"  redis   {platform.redis_url}{embedded}")
    print(f"  schedule {schedule}, {trigger.fanout} worker invocation(s) per tick")
    print(f"  logs    {platform.logs}    Ctrl-C stops everything", flush=True)


def _run(platform: Platform, trigger: WorkerTrigger, schedule: object, data_dir: Path) -> None:
    """The heartbeat (main thread: instances are started here): supervise, apply
    `brkcoin scale`, record, and show the status line."""
    client = redis.Redis.from_url(platform.redis_url, socket_timeout=1, socket_connect_timeout=1)
    meter = wallet.RateMeter()
    tty = sys.stdout.isatty()
    last_print = 0.0
    recorded = platform.pids()
    while True:
        _apply_control(platform, trigger, data_dir)
        platform.tick()
        state = platform.state() | {"scheduler": trigger.state() | {"schedule": str(schedule)}}
        try:
            reading = wallet.read(client)
            state["wallet"] = {**reading, "rate": round(meter.add(reading["now"],
                                                                   reading["hashes"]), 2)}
        except redis.RedisError:
            state["wallet"] = None
        runfile.write(data_dir, runfile.STATUS, state)
        if (pids := platform.pids()) != recorded:  # an instance came or went
            runfile.record(data_dir, platform.urls, platform.redis_url, pids)
            recorded = pids
        line = status_line(state)
        if tty:
            print(f"\r{line}\033[K", end="", flush=True)
        elif time.monotonic() - last_print >= 10:
            print(line, flush=True)
            last_print = time.monotonic()
        time.sleep(0.5)


def _apply_control(platform: Platform, trigger: WorkerTrigger, data_dir: Path) -> None:
    wanted = runfile.read(data_dir, runfile.CONTROL).get("scale")
    if not isinstance(wanted, dict):
        return
    runfile.remove(data_dir, runfile.CONTROL)
    for name, n in wanted.items():
        if name == "worker":
            trigger.fanout = int(n)  # the next tick sends that many
            platform.expected["worker"] = int(n)
        elif name in platform.services:
            platform.scale(name, int(n))


def status_line(state: dict[str, Any]) -> str:
    """One line: speed, totals, each function's instances (and line), the ticks."""
    money = state.get("wallet")
    parts = [f"{money['rate']:8.1f} hashes/s {money['hashes']:>12,} hashes "
             f"{money['coins']:>9,} coins" if money else "redis unreachable"]
    for name, f in state["functions"].items():
        shown = f"{name} {f['instances']}"
        if f["concurrency"] and name != "worker":
            shown += f"x{f['concurrency']}"
        if f["queued"]:
            shown += f" ({f['queued']} waiting)"
        if f["restarts"]:
            shown += f" restarted {f['restarts']}"
        parts.append(shown)
    scheduler = state["scheduler"]
    ticks = f"{scheduler['fanout']}/tick"
    if scheduler["skipped"]:
        ticks += f", {scheduler['skipped']} skipped"
    if scheduler["problem"]:
        ticks += f", last {scheduler['problem'][:60]}"
    parts.append(ticks)
    return " | ".join(parts)


def run_scale(args: argparse.Namespace) -> int:
    wanted: dict[str, int] = {}
    for each in args.scale:
        wanted.update(each)
    owner = runfile.running_owner(args.data_dir)
    if not owner:
        return _fail(f"no `brkcoin up` is running with data folder {args.data_dir}")
    for name, n in wanted.items():
        if name != "worker" and n > FUNCTIONS[name].max_instances:
            return _fail(f"{name} takes at most {FUNCTIONS[name].max_instances} instances")
    runfile.write(args.data_dir, runfile.CONTROL, {"scale": wanted})
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        state = runfile.read(args.data_dir, runfile.STATUS)
        if _reached(state, wanted):
            print(status_line(state))
            return 0
        time.sleep(0.25)
    return _fail("the stack did not reach that scale within 60 s; see `brkcoin status`", 1)


def _reached(state: dict[str, Any], wanted: dict[str, int]) -> bool:
    if not state:
        return False
    for name, n in wanted.items():
        if name == "worker":
            if state["scheduler"]["fanout"] != n:
                return False
        elif state["functions"][name]["instances"] != n:
            return False
    return True

