"""`brkcoin bench`: the real pipeline (functions-framework processes + redis-server)
measured in one run, against a reference measured in the same run, because the
machine's speed varies from day to day and only ratios of one run compare.

- reference: a bare Functions Framework HTTP function with its default settings
  (`return "ok"`, Flask on gunicorn threads), driven by the worker's own
  keep-alive client at the same concurrency: round trips per second, and its
  first answer after the process starts;
- hashes/s for batch=1 (the original protocol) and a large batch at several
  concurrencies, with CPU ms per hash counting every process of the stack;
- the rate with the default 0.1 s delays, at concurrency 1 and 300;
- each function's first answer after its process starts (median of 5), beside
  the reference's and the aio floor's: the same bare function written for
  Functions Framework's async path (`functions_framework.aio`), which is what
  the async stack alone costs before any of our code;
- the in-process limit: sha256(os.urandom(32)) with the coin check, one core.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import requests

from brkcoin.layout import FUNCTIONS, Function
from brkcoin.platform.processes import FunctionProcess, compile_folder, free_port
from brkcoin.stack import Stack

NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}
BIG_BATCH = 8192
REFERENCE_SOURCE = '''\
import functions_framework


@functions_framework.http
def reference(request):
    return "ok"
'''
AIO_FLOOR_SOURCE = '''\
import functions_framework.aio


@functions_framework.aio.http
async def aio_floor(request):
    return "ok"
'''


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


@functools.cache
def _worker_client() -> ModuleType:
    """The worker's own upstream client module (functions/worker/upstream.py)."""
    path = FUNCTIONS["worker"].folder / "upstream.py"
    spec = importlib.util.spec_from_file_location("brkcoin_bench_upstream", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def round_trips(url: str, concurrency: int, seconds: float) -> float:
    """GET / round trips per second, `concurrency` keep-alive loops of the worker's client."""
    client = _worker_client()

    async def loop(stop: float, done: list[int]) -> None:
        upstream = client.Upstream("reference", url, 10.0)
        try:
            while time.monotonic() < stop:
                await upstream.call("GET", "/", limit=1024)
                done[0] += 1
        finally:
            upstream.close()

    async def run() -> float:
        done = [0]
        started = time.monotonic()
        await asyncio.gather(*(loop(started + seconds, done) for _ in range(concurrency)))
        return done[0] / (time.monotonic() - started)

    return asyncio.run(run())


def _tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def cpu_seconds(stack: Stack) -> float:
    """User + system CPU of every process the stack runs (server workers and Redis)."""
    pids = [f.process.pid for f in stack.functions.values() if f.process]
    if stack.redis and stack.redis.process:
        pids.append(stack.redis.process.pid)
    return sum(_tree_cpu(pid) for pid in pids)


def mine_case(stack: Stack, seconds: float, concurrency: int, batch: int) -> dict[str, Any]:
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


def first_answers_ms(functions: dict[str, Function], runs: int,
                     log_dir: Path) -> dict[str, float]:
    """Median time from process start to each function's first 200 answer. The
    functions take turns, run after run, so a slower minute of this shared
    machine weighs on all of them alike. Each folder is byte-compiled first, the
    reference's too, as a platform builds a function before it starts it."""
    for function in functions.values():
        compile_folder(function)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            process = FunctionProcess(function, free_port(), NO_DELAYS, log_dir)
            started = time.perf_counter()
            process.start().wait_ready(30)
            times[name].append((time.perf_counter() - started) * 1000)
            process.stop()
    return {name: round(statistics.median(each), 1) for name, each in times.items()}


def _stack(data_dir: Path, env: dict[str, str]) -> Stack:
    names = ("rng", "hasher", "worker")
    ports = {n: free_port() for n in names}
    return Stack(data_dir, ports=ports, redis_port=free_port(), env=env, names=names)


def bare_function(tmp: Path, name: str, source: str) -> Function:
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(source)
    return Function(name, folder, 0)


def reference_function(tmp: Path) -> Function:
    return bare_function(tmp, "reference", REFERENCE_SOURCE)


def reference(tmp: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    function = reference_function(tmp)
    process = FunctionProcess(function, free_port(), {}, tmp / "logs").start().wait_ready(30)
    try:
        round_trips(process.url, concurrency, 1.0)  # warm-up, as for the pipeline
        rate = round_trips(process.url, concurrency, seconds)
    finally:
        process.stop()
    return {
        "what": "functions-framework default HTTP function `return 'ok'` (Flask, gunicorn)",
        "concurrency": concurrency,
        "round_trips_per_s": round(rate, 1),
    }


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds
    starts = args.starts or (3 if args.quick else 5)
    instances = args.instances or os.cpu_count() or 1
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, {platform.platform()}",
        "seconds_per_case": seconds,
        "instances_per_function": instances,
    }
    with tempfile.TemporaryDirectory(prefix="brkcoin-bench-") as tmp:
        if not args.first_answers_only:
            report |= throughput(Path(tmp), args.quick, seconds, instances)
        cold = first_answers_ms({"reference": reference_function(Path(tmp)),
                                 "aio_floor": bare_function(Path(tmp), "aio_floor",
                                                            AIO_FLOOR_SOURCE),
                                 **FUNCTIONS},
                                starts, Path(tmp) / "cold")
        report["first_answer_starts"] = starts
        report.setdefault("reference", {})["first_answer_ms"] = cold.pop("reference")
        report["aio_floor_first_answer_ms"] = cold.pop("aio_floor")
        report["first_answer_ms"] = cold
    if not args.first_answers_only:
        report["in_process_hashes_per_s_after"] = round(in_process_limit())
    report["ratios"] = ratios(report)
    print(json.dumps(report, indent=2))
    return 0


def throughput(tmp: Path, quick: bool, seconds: float, instances: int) -> dict[str, Any]:
    concurrencies = [1, 4] if quick else [1, 2, 4, 8]
    # Each function runs that many instances: Functions Framework's own WORKERS
    # (gunicorn workers sharing the function's port), as a platform scaling it out
    # on this many cores would. The reference keeps its defaults (one).
    workers = {"WORKERS": str(instances)}
    report: dict[str, Any] = {"in_process_hashes_per_s": round(in_process_limit())}
    report["reference"] = reference(tmp, seconds, 8)
    with _stack(tmp / "nodelay", NO_DELAYS | workers) as stack:
        mine_case(stack, 1.0, max(concurrencies), 1)  # warm-up: imports, connections
        report["batch1"] = [mine_case(stack, seconds, c, 1) for c in concurrencies]
        report["batched"] = [mine_case(stack, seconds, c, BIG_BATCH) for c in concurrencies[1:]]
    with _stack(tmp / "demo", workers) as stack:
        mine_case(stack, 1.0, 1, 1)  # warm-up
        report["demo_delays"] = [
            mine_case(stack, seconds, c, 1) for c in ([1] if quick else [1, 300])
        ]
    return report


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """The figures that compare across runs: each against its reference of this run."""
    ref = report["reference"]
    out = {
        "first_answer_over_reference": round(
            max(report["first_answer_ms"].values()) / ref["first_answer_ms"], 2),
        # What Functions Framework's async path costs by itself, and what is ours.
        "aio_floor_first_answer_over_reference": round(
            report["aio_floor_first_answer_ms"] / ref["first_answer_ms"], 2),
        "first_answer_over_aio_floor": round(
            max(report["first_answer_ms"].values()) / report["aio_floor_first_answer_ms"], 2),
    }
    if "batch1" not in report:
        return out
    limit = (report["in_process_hashes_per_s"] + report["in_process_hashes_per_s_after"]) / 2
    out["batched_over_in_process"] = round(
        max(c["hashes_per_s"] for c in report["batched"]) / limit, 2)
    at8 = [c for c in report["batch1"] if c["concurrency"] == ref["concurrency"]]
    if at8:
        out["batch1_over_reference_round_trips"] = round(
            at8[0]["hashes_per_s"] / ref["round_trips_per_s"], 2)
    return out
