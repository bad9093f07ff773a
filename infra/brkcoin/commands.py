"""Subcommands that work on one machine: up, mine, status, bench."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
import requests

from brkcoin import wallet
from brkcoin.layout import FUNCTIONS
from brkcoin.processes import PortInUse, StartFailed, is_up
from brkcoin.redis_server import RedisUnavailable
from brkcoin.scheduler import BadSchedule, Cron, Scheduler, WorkerTrigger, parse_every
from brkcoin.stack import Stack, clean_leftovers, running_owner

DATA_DIR = Path(os.environ.get("BRKCOIN_DATA", ".brkcoin"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add up, mine, status and bench."""
    up = sub.add_parser("up", help="run the whole stack locally, mining on a schedule")
    up.add_argument("--host", default="127.0.0.1", help="address every server binds")
    up.add_argument("--data-dir", type=Path, default=DATA_DIR, help="Redis AOF, logs (.brkcoin)")
    for name, function in FUNCTIONS.items():
        up.add_argument(f"--{name}-port", type=int, default=function.port, metavar="PORT")
    up.add_argument("--redis-port", type=int, default=6380, metavar="PORT",
                    help="embedded Redis port, when REDIS_URL is unset (6380)")
    when = up.add_mutually_exclusive_group()
    when.add_argument("--every", default="10s", help="local interval between ticks (10s)")
    when.add_argument("--schedule", metavar="CRON", help='cron expression, e.g. "* * * * *"')
    up.add_argument("--workers", type=int, default=1, help="worker invocations per tick (1)")
    up.add_argument("--concurrency", type=int, help="mining loops inside each invocation")
    up.add_argument("--batch", type=int, help="units per rng/hasher call (1: the original)")
    up.set_defaults(run=run_up)

    mine = sub.add_parser("mine", help="run one worker invocation and print its summary")
    mine.add_argument("--url", default=os.environ.get("WORKER_URL", "http://127.0.0.1:8003"))
    mine.add_argument("--seconds", type=float)
    mine.add_argument("--concurrency", type=int)
    mine.add_argument("--batch", type=int)
    mine.set_defaults(run=run_mine)

    status = sub.add_parser("status", help="print the wallet (hashes, coins, rate) as JSON")
    status.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0"))
    status.add_argument("--host", default="127.0.0.1")
    status.add_argument("--sample", type=float, default=2.0, help="seconds to measure the rate")
    status.set_defaults(run=run_status)

    bench = sub.add_parser("bench", help="benchmark the pipeline with all delays at 0")
    bench.add_argument("--seconds", type=float, default=5.0, help="mining time per case (5)")
    bench.add_argument("--quick", action="store_true", help="fewer cases, for a smoke run")
    bench.set_defaults(run=run_bench)


def _inputs(args: argparse.Namespace, *names: str) -> dict[str, int]:
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _token_headers() -> dict[str, str]:
    token = os.environ.get("WORKER_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def run_mine(args: argparse.Namespace) -> int:
    inputs = _inputs(args, "seconds", "concurrency", "batch")
    try:
        response = requests.post(
            args.url, json=inputs, headers=_token_headers(), timeout=inputs.get("seconds", 900) + 60
        )
    except requests.RequestException as e:
        print(f"brkcoin: worker not reachable at {args.url} ({e}); is `brkcoin up` running?",
              file=sys.stderr)
        return 2
    print(response.text.strip())
    return 0 if response.ok else 1


def run_status(args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(args.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        first = wallet.read(client)
        time.sleep(args.sample)
        last = wallet.read(client)
    except redis.RedisError as e:
        print(json.dumps({"error": f"redis unreachable at {args.redis_url}: {e}"}))
        return 2
    meter = wallet.RateMeter()
    meter.add(first["now"], first["hashes"])
    report = {**last, "rate": round(meter.add(last["now"], last["hashes"]), 1), "functions": {
        n: is_up(f"http://{args.host}:{f.port}", 0.5) for n, f in FUNCTIONS.items()
    }}
    print(json.dumps(report))
    return 0


def run_up(args: argparse.Namespace) -> int:
    try:
        schedule = Cron(args.schedule) if args.schedule else parse_every(args.every)
    except BadSchedule as e:
        print(f"brkcoin: {e}", file=sys.stderr)
        return 2
    owner = running_owner(args.data_dir)
    if owner:
        print(f"brkcoin: another `brkcoin up` (pid {owner}) is using {args.data_dir}; "
              "stop it first", file=sys.stderr)
        return 1
    for record in clean_leftovers(args.data_dir):
        print(f"brkcoin: stopped a leftover {record['name']} (pid {record['pid']}) "
              "of a run that did not clean up")
    ports = {n: getattr(args, f"{n}_port") for n in FUNCTIONS}
    stack = Stack(args.data_dir, args.host, ports, args.redis_port, os.environ.get("REDIS_URL"))
    _stop_on_signals()
    try:
        stack.start()
    except (PortInUse, StartFailed, RedisUnavailable) as e:
        print(f"brkcoin: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    trigger = WorkerTrigger(
        stack.urls["worker"], args.workers, _inputs(args, "concurrency", "batch"),
        os.environ.get("WORKER_TOKEN", ""), log=_logger(args.data_dir / "logs" / "scheduler.log"),
    )
    scheduler = Scheduler(schedule, trigger)
    threading.Thread(target=scheduler.run, daemon=True).start()
    _announce(stack, schedule, args)
    try:
        _status_loop(stack)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nbrkcoin: stopping...", flush=True)
        scheduler.stop()
        trigger.close()
        stack.stop()
        print("brkcoin: stopped every process it started.")
    return 0


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) stop the stack the way Ctrl-C does."""
    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)  # one clean stop, even if signalled twice
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def _logger(path: Path) -> Callable[[str], None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock, open(path, "a") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    return log


def _announce(stack: Stack, schedule: object, args: argparse.Namespace) -> None:
    print("brkcoin is up:")
    for name, url in stack.urls.items():
        print(f"  {name:7} {url}" + ("   <- open this" if name == "webui" else ""))
    print(f"  redis   {stack.redis_url}" + ("  (embedded, AOF in "
          f"{stack.redis.data_dir})" if stack.redis else ""))
    print(f"  schedule {schedule}, {args.workers} worker invocation(s) per tick")
    print(f"  logs    {stack.data_dir / 'logs'}    Ctrl-C stops everything", flush=True)


def _status_loop(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=1, socket_connect_timeout=1)
    meter = wallet.RateMeter()
    tty = sys.stdout.isatty()
    last_print = 0.0
    while True:
        try:
            now = wallet.read(client)
            rate = meter.add(now["now"], now["hashes"])
            line = (f"{rate:10.1f} hashes/s  {now['hashes']:>12,} hashes  "
                    f"{now['coins']:>9,} coins")
        except redis.RedisError:
            line = "redis unreachable"
        up = " ".join(f"{n}:{'up' if f.is_up(0.5) else 'DOWN'}" for n, f in stack.functions.items())
        if tty:
            print(f"\r{line}  {up}\033[K", end="", flush=True)
        elif time.monotonic() - last_print >= 10:
            print(f"{line}  {up}", flush=True)
            last_print = time.monotonic()
        time.sleep(1)


def run_bench(args: argparse.Namespace) -> int:
    from brkcoin import bench  # imported on use: it is the only command that needs it

    return bench.run(args)
