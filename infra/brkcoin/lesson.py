"""`brkcoin lesson`: the DockerCoins scaling lesson, run and measured.

As the slides tell it: one worker mines about 3.3 hashes/s (three 0.1 s waits a
hash); two and three scale linearly; ten hit a plateau at about 10 hashes/s;
the per-function latency shows rng, which serves one request at a time; four
rng instances lift the ten workers to about 33 hashes/s.

It starts its own local platform in the lesson's shape (`brkcoin up --lesson`:
one rng instance at concurrency 1, demo delays 0.1 s), steps through the
lesson, prints a table of what it measured and writes a plot of the speed
against time with the steps marked (SVG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio

from brkcoin import wallet
from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import free_port
from brkcoin.platform.run import Stopped, serve
from brkcoin.platform.scheduler import Interval, Scheduler, WorkerTrigger
from brkcoin.platform.supervisor import Platform
from brkcoin.up import LESSON_DELAYS

TICK = 10.0  # an invocation mines the whole tick: the rate stays continuous


@dataclass(frozen=True)
class Step:
    label: str
    workers: int
    rng: int  # rng instances
    expected: float  # hashes/s, as the slides have it


STEPS = (
    Step("1 worker", 1, 1, 3.3),
    Step("2 workers", 2, 1, 6.6),
    Step("3 workers", 3, 1, 10.0),
    Step("10 workers: plateau", 10, 1, 10.0),
    Step("scale rng to 4", 10, 4, 33.3),
)


@dataclass
class Measured:
    step: Step
    started: float  # seconds since the lesson began
    speed: float
    stats: dict[str, Any]


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="brkcoin-lesson-"))
    ports = {name: free_port() for name in FUNCTIONS}
    platform = Platform(data_dir, ports=ports, redis_port=free_port(), env=dict(LESSON_DELAYS),
                        scale={"rng": 1, "hasher": 1, "webui": 1}, concurrency={"rng": 1})
    print(f"brkcoin lesson: starting the platform in the lesson's shape (data in {data_dir})",
          flush=True)
    trigger = WorkerTrigger(platform.urls["worker"], 1, {}, log=lambda line: None)
    try:
        measured, samples = serve(platform, Scheduler(Interval(TICK), trigger),
                                  lambda: _steps(platform, trigger, args.step))
    except Stopped:
        return 130
    print(table(measured))
    args.plot.write_text(svg(samples, measured))
    print(f"plot: {args.plot}")
    return 0


async def _steps(platform: Platform, trigger: WorkerTrigger,
                 seconds: float) -> tuple[list[Measured], list[tuple[float, float]]]:
    client = redis.asyncio.Redis.from_url(platform.redis_url, socket_timeout=2)
    began = time.monotonic()
    samples: list[tuple[float, float]] = []  # (seconds since began, hashes)
    measured = []
    for step in STEPS:
        trigger.fanout = step.workers
        platform.scale("rng", step.rng)
        started = time.monotonic() - began
        print(f"[{started:5.0f} s] {step.label}: {step.workers} worker(s), "
              f"{step.rng} rng instance(s)", flush=True)
        window: list[tuple[float, float]] = []
        settle = TICK + 2  # the next tick takes the new fan-out
        while (now := time.monotonic() - began) < started + seconds:
            reading = await wallet.read_async(client)
            samples.append((now, reading["hashes"]))
            if now >= started + settle:
                window.append((now, reading["hashes"]))
            await asyncio.sleep(1.0)
        (t0, h0), (t1, h1) = window[0], window[-1]
        speed = (h1 - h0) / (t1 - t0)
        stats = await asyncio.to_thread(_stats, platform.urls["webui"])  # a blocking read
        measured.append(Measured(step, started, speed, stats))
        print(f"         {speed:.1f} hashes/s (the slides: {step.expected:g}); "
              f"{_latencies(stats)}", flush=True)
    await client.aclose()
    return measured, samples


def _stats(webui: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(webui + "/stats", timeout=5) as answer:
            stats: dict[str, Any] = json.loads(answer.read())
            return stats
    except (OSError, ValueError):
        return {}


def _latencies(stats: dict[str, Any]) -> str:
    functions = stats.get("functions", {})
    shown = []
    for name in ("rng", "hasher"):
        f = functions.get(name, {})
        if f.get("p50_ms") is not None:
            shown.append(f"{name} p50 {f['p50_ms']:g} ms, p95 {f['p95_ms']:g} ms")
    return "; ".join(shown) or "no latency yet"


def table(measured: list[Measured]) -> str:
    lines = ["| step | workers | rng instances | hashes/s | the slides | rng p50 / p95 |"
             " hasher p50 / p95 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in measured:
        functions = m.stats.get("functions", {})

        def latency(name: str, functions: dict[str, Any] = functions) -> str:
            f = functions.get(name, {})
            if f.get("p50_ms") is None:
                return "-"
            return f"{f['p50_ms']:g} / {f['p95_ms']:g} ms"

        lines.append(f"| {m.step.label} | {m.step.workers} | {m.step.rng} | {m.speed:.1f} | "
                     f"{m.step.expected:g} | {latency('rng')} | {latency('hasher')} |")
    return "\n".join(lines)


def svg(samples: list[tuple[float, float]], measured: list[Measured],
        width: int = 720, height: int = 300) -> str:
    """Speed (hashes/s over 5 s) against time, the steps marked: a plain SVG."""
    speeds = []
    for i, (t, h) in enumerate(samples):
        j = max(0, i - 5)
        t0, h0 = samples[j]
        if t > t0:
            speeds.append((t, (h - h0) / (t - t0)))
    end = samples[-1][0] if samples else 1.0
    top = max([s for _, s in speeds] + [10.0]) * 1.15
    left, bottom, right, up = 50, height - 30, width - 10, 20

    def x(t: float) -> float:
        return left + (right - left) * t / end

    def y(speed: float) -> float:
        return bottom - (bottom - up) * speed / top

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>',
           f'<line x1="{left}" y1="{up}" x2="{left}" y2="{bottom}" stroke="#444"/>']
    for value in range(0, int(top) + 1, 10):
        out.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                   f'{value}</text>')
        out.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{right}" y2="{y(value):.1f}" '
                   'stroke="#eee"/>')
    for m in measured:
        out.append(f'<line x1="{x(m.started):.1f}" y1="{up}" x2="{x(m.started):.1f}" '
                   f'y2="{bottom}" stroke="#999" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x(m.started) + 3:.1f}" y="{up + 12}">{m.step.label}</text>')
    points = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s in speeds)
    out.append(f'<polyline points="{points}" fill="none" stroke="#1a7f37" stroke-width="2"/>')
    out.append(f'<text x="{left}" y="{height - 8}">seconds (0 to {end:.0f}); '
               'hashes per second over 5 s</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
