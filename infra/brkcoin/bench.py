"""`brkcoin bench`: the real pipeline (functions-framework processes + redis-server)
measured in one run, so the numbers can be compared with each other.

Reports hashes/s for batch=1 (the original protocol) and a large batch at several
concurrencies, CPU ms per hash with every process of the stack counted, the demo
rate with the default 0.1 s delays, each function's first answer after its process
starts, and the in-process limit of sha256(os.urandom(32)) for the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import requests

from brkcoin.layout import FUNCTIONS
from brkcoin.processes import FunctionProcess, free_port
from brkcoin.stack import Stack

NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}
BIG_BATCH = 8192


def in_process_limit(seconds: float = 1.0) -> float:
    """sha256(os.urandom(32)) with the coin check, in a plain loop on one core."""
    sha256, urandom = hashlib.sha256, os.urandom
    count, coins = 0, 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(1000):
            if sha256(urandom(32)).hexdigest()[0] == "0":
                coins += 1
        count += 1000
    return count / (time.perf_counter() - started)


def _tree(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def cpu_seconds(stack: Stack) -> float:
    """User + system CPU of every process the stack runs (gunicorn workers included)."""
    pids = [f.process.pid for f in stack.functions.values()] + [stack.redis.process.pid]
    total = 0.0
    for pid in pids:
        for process in _tree(pid):
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


def mine_case(stack: Stack, seconds: float, concurrency: int, batch: int) -> dict:
    cpu_before = cpu_seconds(stack)
    response = requests.post(
        stack.urls["worker"],
        json={"seconds": seconds, "concurrency": concurrency, "batch": batch},
        timeout=seconds + 60,
    )
    cpu = cpu_seconds(stack) - cpu_before
    summary = response.json()
    hashes = summary["hashes"]
    return {
        "batch": batch,
        "concurrency": concurrency,
        "hashes_per_s": round(hashes / summary["seconds"], 1),
        "cpu_ms_per_hash": round(cpu * 1000 / hashes, 4) if hashes else None,
        "errors": sum(summary["errors"].values()),
        "last_errors": summary["last_errors"],
    }


def first_answer_ms(name: str, runs: int, log_dir: Path) -> float:
    """Median time from process start to the function's first 200 answer."""
    times = []
    for _ in range(runs):
        process = FunctionProcess(FUNCTIONS[name], free_port(), NO_DELAYS, log_dir)
        started = time.perf_counter()
        process.start().wait_ready(30)
        times.append((time.perf_counter() - started) * 1000)
        process.stop()
    return round(statistics.median(times), 1)


def _stack(data_dir: Path, env: dict) -> Stack:
    names = ("rng", "hasher", "worker")
    ports = {n: free_port() for n in names}
    return Stack(data_dir, ports=ports, redis_port=free_port(), env=env, names=names)


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds
    concurrencies = [1, 4] if args.quick else [1, 2, 4, 8]
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, {platform.platform()}",
        "seconds_per_case": seconds,
    }
    with tempfile.TemporaryDirectory(prefix="brkcoin-bench-") as tmp:
        with _stack(Path(tmp) / "nodelay", NO_DELAYS) as stack:
            report["batch1"] = [mine_case(stack, seconds, c, 1) for c in concurrencies]
            report["batched"] = [
                mine_case(stack, seconds, c, BIG_BATCH) for c in concurrencies[:3]
            ]
        with _stack(Path(tmp) / "demo", {}) as stack:
            report["demo_delays"] = [
                mine_case(stack, seconds, c, 1) for c in ([1] if args.quick else [1, 100])
            ]
        runs = 3 if args.quick else 5
        report["first_answer_ms"] = {
            n: first_answer_ms(n, runs, Path(tmp) / "cold") for n in FUNCTIONS
        }
    report["in_process_hashes_per_s"] = round(in_process_limit())
    best = max(report["batch1"] + report["batched"], key=lambda c: c["hashes_per_s"])
    limit = report["in_process_hashes_per_s"]
    report["best_over_in_process"] = round(best["hashes_per_s"] / limit, 3)
    print(json.dumps(report, indent=2))
    return 0
