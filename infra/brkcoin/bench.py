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
- the in-process limit: sha256(os.urandom(32)) with the coin check, one core;
- the front door's cost ("door", alone with --door-only): the same worker
  invocation (batch 1, concurrency 1 and 8) against the same rng and hasher
  instances, once calling them directly and once through FrontDoor objects, in
  turns, and the ratio of the two hash rates.
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
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import requests

from brkcoin.layout import FUNCTIONS, Function
from brkcoin.platform.processes import FunctionProcess, compile_folder, free_port
from brkcoin.platform.redis_server import RedisServer
from brkcoin.stack import Stack

NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}
BIG_BATCH = 8192
DOOR_UPSTREAMS = ("rng", "hasher")  # what the worker calls, through a door or not
DOOR_CONCURRENCIES = (1, 8)
DOOR_ROUNDS = 5  # turns of (direct, door) per concurrency: other load comes and goes
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


def _busy_cpu() -> float:
    """CPU seconds this machine has been busy, all cores together (time a
    hypervisor gave to other guests included: this machine could not use it)."""
    times = psutil.cpu_times()._asdict()
    return float(sum(times.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq",
                                                "steal")))


def stack_pids(stack: Stack) -> list[int]:
    """Every process the stack runs (server workers are their children) and Redis."""
    pids = [f.process.pid for f in stack.functions.values() if f.process]
    if stack.redis and stack.redis.process:
        pids.append(stack.redis.process.pid)
    return pids


def invoke(url: str, pids: list[int], seconds: float, concurrency: int,
           batch: int, traced: bool = False) -> tuple[dict[str, Any], float]:
    """One worker invocation: its summary, and the CPU seconds the processes
    `pids` (with their children) spent meanwhile. Untraced unless `traced`: a
    load generator's calls are not sampled (a sampled call costs a log line in
    rng and hasher; the traced case measures it)."""
    cpu_before = sum(_tree_cpu(pid) for pid in pids)
    flags = "01" if traced else "00"
    response = requests.post(
        url,
        json={"seconds": seconds, "concurrency": concurrency, "batch": batch},
        headers={"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}"},
        timeout=seconds + 60,
    )
    cpu = sum(_tree_cpu(pid) for pid in pids) - cpu_before
    summary: dict[str, Any] = response.json()
    return summary, cpu


def mine_case(stack: Stack, seconds: float, concurrency: int, batch: int,
              traced: bool = False) -> dict[str, Any]:
    summary, cpu = invoke(stack.urls["worker"], stack_pids(stack), seconds, concurrency, batch,
                          traced)
    hashes = summary["hashes"]
    return {
        "batch": batch,
        "concurrency": concurrency,
        **({"traced": True} if traced else {}),
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


# -- the front door's cost --
# The doors run in a child process, on one uvloop loop in its main thread, as
# `brkcoin up` runs them (beside a control plane that is idle between its
# heartbeats): their own GIL and core time, so the bench's own thread (blocked
# in the invocation meanwhile) takes nothing from them, and their CPU is one pid
# to read (and to attach a profiler to).
DOORS_MAIN = "import sys; from brkcoin.bench import serve_doors; serve_doors(sys.argv[1])"


def serve_doors(spec_json: str) -> None:
    """The child's side: a FrontDoor per function of `spec` ({name: {"host",
    "port", "concurrency", "instances": [[name, host, port], ...]}}) listening on
    its port; "ready" and the loop's class on stdout once all listen; the doors
    close when stdin does (the bench ended, or died)."""
    import uvloop

    from brkcoin.platform.proxy import FrontDoor, Instance

    spec: dict[str, dict[str, Any]] = json.loads(spec_json)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        doors = []
        for name, each in spec.items():
            door = FrontDoor(name, each["concurrency"])
            for instance, host, port in each["instances"]:
                door.add(Instance(instance, host, port))
            await door.start(each["host"], each["port"])
            doors.append(door)
        closed = loop.create_future()

        def readable() -> None:
            if not os.read(sys.stdin.fileno(), 4096) and not closed.done():
                closed.set_result(None)

        loop.add_reader(sys.stdin.fileno(), readable)
        kind = type(loop)
        print(json.dumps({"ready": True, "loop": f"{kind.__module__}.{kind.__qualname__}"}),
              flush=True)
        try:
            await closed
        finally:
            loop.remove_reader(sys.stdin.fileno())
            for door in doors:
                await door.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


class DoorProcess:
    """The child process that runs the doors (see serve_doors)."""

    def __init__(self, spec: dict[str, dict[str, Any]], log: Path) -> None:
        self.spec, self.log = spec, log
        self.process: subprocess.Popen[bytes] | None = None
        self.loop = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30) -> DoorProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DOORS_MAIN, json.dumps(self.spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the doors did not start in {timeout} s; see {self.log}")
        self.loop = json.loads(line)["loop"]
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the doors close and the child ends
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        process.stdout.close()


def door_vs_direct(tmp: Path, seconds: float, rounds: int,
                   concurrencies: tuple[int, ...] = DOOR_CONCURRENCIES) -> dict[str, Any]:
    """The same worker invocation, through the doors and not, in turns.

    One rng and one hasher instance (functions-framework processes, delays 0, one
    server worker each), as `brkcoin up` starts them, and a Redis. Two worker
    processes, identical but for RNG_URL and HASHER_URL: one calls the instances
    directly, the other through FrontDoor objects (one per function, each with
    that one instance, the function's spec concurrency) in a child process.
    Only one invocation runs at a time; each concurrency is measured direct,
    door, direct, door... so a noisy minute weighs on both paths alike."""
    host = "127.0.0.1"
    folder = tmp / "door"
    logs = folder / "logs"
    redis_server = RedisServer(folder / "redis", free_port(host), host)
    upstreams = {name: FunctionProcess(FUNCTIONS[name], free_port(host), NO_DELAYS, logs, host,
                                       name=f"{name}-1")
                 for name in DOOR_UPSTREAMS}
    door_ports = {name: free_port(host) for name in DOOR_UPSTREAMS}
    doors = DoorProcess({name: {"host": host, "port": door_ports[name],
                                "concurrency": FUNCTIONS[name].concurrency,
                                "instances": [[u.instance, host, u.port]]}
                         for name, u in upstreams.items()}, logs / "doors.log")
    wiring = {
        "direct": {f"{name.upper()}_URL": u.url for name, u in upstreams.items()},
        "door": {f"{name.upper()}_URL": f"http://{host}:{door_ports[name]}"
                 for name in DOOR_UPSTREAMS},
    }
    workers = {path: FunctionProcess(FUNCTIONS["worker"], free_port(host),
                                     NO_DELAYS | {"REDIS_URL": redis_server.url} | urls, logs,
                                     host, name=f"worker-{path}")
               for path, urls in wiring.items()}
    everyone = [*upstreams.values(), *workers.values()]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {
        (path, c): [] for path in wiring for c in concurrencies}
    try:
        redis_server.start()
        for name in {p.function.name for p in everyone}:
            compile_folder(FUNCTIONS[name])
        for process in everyone:
            process.start()
        for process in everyone:
            process.wait_ready(30)
        doors.start()
        assert redis_server.process is not None
        shared = [redis_server.process.pid, *(u.process.pid for u in upstreams.values()
                                              if u.process)]
        for worker in workers.values():  # warm-up: imports, connections
            invoke(worker.url, [], 1.0, max(concurrencies), 1)
        for _ in range(rounds):
            for c in concurrencies:
                for path, worker in workers.items():
                    assert worker.process is not None
                    pids = [*shared, worker.process.pid]
                    door_before, busy_before = _tree_cpu(doors.pid), _busy_cpu()
                    summary, cpu = invoke(worker.url, pids, seconds, c, 1)
                    busy = _busy_cpu() - busy_before
                    door_cpu = _tree_cpu(doors.pid) - door_before if path == "door" else 0.0
                    hashes = summary["hashes"]
                    runs[path, c].append({
                        "hashes_per_s": hashes / summary["seconds"],
                        # what else this machine ran meanwhile (other work, the bench itself)
                        "other_load_cores": max(0.0, busy - cpu - door_cpu) / summary["seconds"],
                        "cpu_ms_per_hash": (cpu + door_cpu) * 1000 / max(hashes, 1),
                        # a hash is two requests through the doors: rng's and hasher's
                        "door_cpu_us_per_request": door_cpu * 1e6 / max(2 * hashes, 1),
                        "errors": sum(summary["errors"].values()),
                    })
    finally:
        doors.stop()
        for process in everyone:
            process.stop()
        redis_server.stop()
    cases = []
    for c in concurrencies:
        direct, door = runs["direct", c], runs["door", c]
        # Each door run against the direct run just before it: a load that comes
        # and goes on this machine weighs on both of a pair alike.
        pairs = [d["hashes_per_s"] / max(r["hashes_per_s"], 1e-9)
                 for r, d in zip(direct, door, strict=True)]
        cases.append({
            "batch": 1,
            "concurrency": c,
            "direct_hashes_per_s": [round(r["hashes_per_s"], 1) for r in direct],
            "door_hashes_per_s": [round(r["hashes_per_s"], 1) for r in door],
            "round_ratios": [round(x, 2) for x in pairs],
            "door_over_direct": round(statistics.median(pairs), 2),
            "direct_cpu_ms_per_hash": round(_median(direct, "cpu_ms_per_hash"), 4),
            "door_cpu_ms_per_hash": round(_median(door, "cpu_ms_per_hash"), 4),
            "door_cpu_us_per_request": round(_median(door, "door_cpu_us_per_request"), 1),
            "other_load_cores": round(_median(direct + door, "other_load_cores"), 2),
            "errors": sum(int(r["errors"]) for r in direct + door),
        })
    return {
        "what": "the same worker invocation against the same rng and hasher instance, "
                "directly and through FrontDoor (proxy.py), in turns; door_over_direct: "
                "the median over the rounds of door hashes/s / direct hashes/s",
        "instances": {name: 1 for name in DOOR_UPSTREAMS},
        "door_loop": doors.loop,
        "rounds": rounds,
        "seconds_per_case": seconds,
        "cases": cases,
    }


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds
    starts = args.starts or (3 if args.quick else 5)
    instances = args.instances or os.cpu_count() or 1
    door_only = args.door_only
    rounds = args.rounds or (1 if args.quick else DOOR_ROUNDS)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, {platform.platform()}",
        "seconds_per_case": seconds,
    }
    with tempfile.TemporaryDirectory(prefix="brkcoin-bench-") as tmp:
        if door_only:
            report["door"] = door_vs_direct(Path(tmp), seconds, rounds)
            report["ratios"] = ratios(report)
            print(json.dumps(report, indent=2))
            return 0
        report["instances_per_function"] = instances
        if not args.first_answers_only:
            report |= throughput(Path(tmp), args.quick, seconds, instances)
            report["door"] = door_vs_direct(Path(tmp), seconds, rounds)
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
        # Every call sampled: rng and hasher log each one (what tracing costs).
        report["batch1_traced"] = mine_case(stack, seconds, max(concurrencies), 1, traced=True)
    with _stack(tmp / "demo", workers) as stack:
        mine_case(stack, 1.0, 1, 1)  # warm-up
        report["demo_delays"] = [
            mine_case(stack, seconds, c, 1) for c in ([1] if quick else [1, 300])
        ]
    return report


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """The figures that compare across runs: each against its reference of this run."""
    out: dict[str, float] = {}
    if "first_answer_ms" in report:
        ref_ms = report["reference"]["first_answer_ms"]
        worst = max(report["first_answer_ms"].values())
        floor = report["aio_floor_first_answer_ms"]
        out["first_answer_over_reference"] = round(worst / ref_ms, 2)
        # What Functions Framework's async path costs by itself, and what is ours.
        out["aio_floor_first_answer_over_reference"] = round(floor / ref_ms, 2)
        out["first_answer_over_aio_floor"] = round(worst / floor, 2)
    if "batch1" in report:
        ref = report["reference"]
        limit = (report["in_process_hashes_per_s"]
                 + report["in_process_hashes_per_s_after"]) / 2
        out["batched_over_in_process"] = round(
            max(c["hashes_per_s"] for c in report["batched"]) / limit, 2)
        at8 = [c for c in report["batch1"] if c["concurrency"] == ref["concurrency"]]
        if at8:
            out["batch1_over_reference_round_trips"] = round(
                at8[0]["hashes_per_s"] / ref["round_trips_per_s"], 2)
            if "batch1_traced" in report:
                out["batch1_traced_over_untraced"] = round(
                    report["batch1_traced"]["hashes_per_s"] / at8[0]["hashes_per_s"], 2)
    for case in report.get("door", {}).get("cases", []):
        out[f"door_over_direct_batch{case['batch']}_c{case['concurrency']}"] = (
            case["door_over_direct"])
    return out
