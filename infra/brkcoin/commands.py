"""Subcommands that work on one machine besides `up` and `scale` (up.py): mine,
status, bench, lesson and logs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis
import requests

from brkcoin import up, wallet
from brkcoin.platform import runfile
from brkcoin.platform.processes import is_up


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add up, scale, mine, status, bench, lesson and logs."""
    up.register(sub)

    mine = sub.add_parser("mine", help="run one worker invocation and print its summary")
    mine.add_argument("--url", help="the worker (default: the running `up`'s, else "
                                    "WORKER_URL, else http://127.0.0.1:8003)")
    mine.add_argument("--data-dir", type=Path, default=up.DATA_DIR)
    mine.add_argument("--seconds", type=float)
    mine.add_argument("--concurrency", type=int)
    mine.add_argument("--batch", type=int)
    mine.set_defaults(run=run_mine)

    status = sub.add_parser("status", help="the running stack: wallet, rate, and a row per "
                                           "function (instances, line, cold starts, the "
                                           "autoscaler's last decision)")
    status.add_argument("--json", action="store_true", help="everything, as one JSON object")
    status.add_argument("--data-dir", type=Path, default=up.DATA_DIR,
                        help="the data folder of the `brkcoin up` to read (.brkcoin)")
    status.add_argument("--redis-url", help="read this wallet instead (no running `up`)")
    status.add_argument("--sample", type=float, default=2.0, help="seconds to measure the rate")
    status.set_defaults(run=run_status)

    bench = sub.add_parser("bench", help="benchmark the pipeline with all delays at 0")
    bench.add_argument("--seconds", type=float, default=5.0, help="mining time per case (5)")
    bench.add_argument("--quick", action="store_true", help="fewer cases, for a smoke run")
    bench.add_argument("--instances", type=int,
                       help="instances of each function (default: one a core)")
    bench.add_argument("--starts", type=int,
                       help="starts per function for the first answer (default 5, quick 3)")
    bench.add_argument("--first-answers-only", action="store_true",
                       help="measure only the first answers (with the reference's)")
    bench.add_argument("--door-only", action="store_true",
                       help="measure only the front door beside the direct path")
    bench.add_argument("--rounds", type=int,
                       help="turns of direct and door per concurrency (default 3, quick 1)")
    bench.set_defaults(run=run_bench)

    lesson = sub.add_parser("lesson", help="the DockerCoins scaling lesson, measured: "
                                           "a table and a plot")
    lesson.add_argument("--step", type=float, default=40.0, help="seconds per step (40)")
    lesson.add_argument("--plot", type=Path, default=Path("lesson.svg"),
                        help="where to write the plot (lesson.svg)")
    lesson.add_argument("--data-dir", type=Path, help="data folder (default: a fresh one)")
    lesson.set_defaults(run=run_lesson)

    logs = sub.add_parser("logs", help="every instance's log lines merged by time, each "
                                       "prefixed by its instance (as `docker compose logs`)")
    logs.add_argument("names", nargs="*", metavar="NAME",
                      help="webui, rng, hasher, worker, platform, scheduler, redis (default: all)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="then print new lines as they come, until Ctrl-C")
    logs.add_argument("--since", help="only lines from then on: 30s, 10m, 2h, or an ISO time")
    logs.add_argument("--data-dir", type=Path, default=up.DATA_DIR,
                      help="the data folder `brkcoin up` writes its logs in (.brkcoin)")
    logs.set_defaults(run=run_logs)


def _token_headers() -> dict[str, str]:
    token = os.environ.get("WORKER_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def run_mine(args: argparse.Namespace) -> int:
    url = (args.url or runfile.read(args.data_dir, runfile.STACK).get("urls", {}).get("worker")
           or os.environ.get("WORKER_URL", "http://127.0.0.1:8003"))
    inputs = {n: getattr(args, n) for n in ("seconds", "concurrency", "batch")
              if getattr(args, n) is not None}
    try:
        response = requests.post(url, json=inputs, headers=_token_headers(),
                                 timeout=inputs.get("seconds", 900) + 60)
    except requests.RequestException as e:
        print(f"brkcoin: worker not reachable at {url} ({e}); is `brkcoin up` running?",
              file=sys.stderr)
        return 2
    print(response.text.strip())
    return 0 if response.ok else 1


def run_status(args: argparse.Namespace) -> int:
    stack = runfile.read(args.data_dir, runfile.STACK)
    redis_url = args.redis_url or stack.get("redis_url")
    if not redis_url:
        print(f"brkcoin: no `brkcoin up` is running with data folder {args.data_dir}; "
              "give its --data-dir, or --redis-url to read a wallet", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        first = wallet.read(client)
        time.sleep(args.sample)
        last = wallet.read(client)
    except redis.RedisError as e:
        print(json.dumps({"error": f"redis unreachable at {redis_url}: {e}"}))
        return 2
    meter = wallet.RateMeter()
    meter.add(first["now"], first["hashes"])
    report: dict[str, Any] = {**last, "rate": round(meter.add(last["now"], last["hashes"]), 1)}
    urls = stack.get("urls", {})
    if urls:
        state = runfile.read(args.data_dir, runfile.STATUS)
        report["functions"] = {
            name: {"up": is_up(url, 0.5)} | {
                k: v for k, v in state.get("functions", {}).get(name, {}).items() if k != "url"}
            for name, url in urls.items()
        }
        report["redis"] = state.get("redis", {})
        report["scheduler"] = state.get("scheduler", {})
    print(json.dumps(report) if args.json else status_table(report))
    return 0


COLUMNS = ("NAME", "UP", "INSTANCES", "CONCURRENCY", "IN FLIGHT", "QUEUED", "RESTARTS",
           "COLD STARTS", "INSTANCE-S", "LAST DECISION")


def status_table(report: dict[str, Any]) -> str:
    """What `kubectl get` and `docker compose ps` show: a line of totals, then a row
    per function. status.json may come from another version of `up`, or be
    damaged: what is missing or not a number shows as "?"."""
    lines = [f"{_figure(report.get('rate'), '{:.1f}')} hashes/s, "
             f"{_figure(report.get('hashes'), '{:,}')} hashes, "
             f"{_figure(report.get('coins'), '{:,}')} coins"]
    scheduler = report.get("scheduler")
    if isinstance(scheduler, dict) and scheduler:
        fanout = scheduler.get("fanout")
        lines[0] += (f"; schedule {str(scheduler.get('schedule', '?'))[:60]}, "
                     + ("paused" if fanout == 0 else f"{_figure(fanout)} invocation(s) a tick"))
    functions = report.get("functions")
    if not isinstance(functions, dict) or not functions:
        return lines[0]
    rows = [COLUMNS]
    for name, f in functions.items():
        f = f if isinstance(f, dict) else {}
        instances = f"{_figure(f.get('instances'))}/{_figure(f.get('wanted'))}"
        if f.get("autoscaled") is False:
            instances += " pinned"
        elif f.get("panic") is True:
            instances += " panic"
        cold = _figure(f.get("cold_starts"))
        if _number(f.get("cold_start_seconds")):
            cold += f" ({f['cold_start_seconds']:.2f} s)"
        decision = f.get("decision")
        last = "-"
        if isinstance(decision, dict):
            last = (f"{_figure(decision.get('from'))} \u2192 {_figure(decision.get('to'))}: "
                    f"{str(decision.get('reason', '?'))[:120]}")
        concurrency = f.get("concurrency")
        rows.append((str(name)[:20], "yes" if f.get("up") is True else "no", instances,
                     "unlimited" if concurrency == 0 else _figure(concurrency),
                     _figure(f.get("in_flight")), _figure(f.get("queued")),
                     _figure(f.get("restarts")), cold,
                     _figure(f.get("instance_seconds"), "{:.0f}"), last))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines += ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "   " + row[-1] for row in rows]
    return "\n".join(lines)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e15


def _figure(value: object, form: str = "{}") -> str:
    return form.format(value) if _number(value) else "?"


def run_bench(args: argparse.Namespace) -> int:
    from brkcoin import bench  # imported on use: only this command needs it

    return bench.run(args)


def run_lesson(args: argparse.Namespace) -> int:
    from brkcoin import lesson  # imported on use: only this command needs it

    return lesson.run(args)


def run_logs(args: argparse.Namespace) -> int:
    from brkcoin import logs  # imported on use: only this command needs it

    return logs.run(args)
