"""`brkcoin lesson`: the DockerCoins scaling lesson, run and measured.

As the slides tell it: one worker mines about 3.3 hashes/s (three 0.1 s waits a
hash); two and three scale linearly; ten hit a plateau at about 10 hashes/s;
the per-function latency shows rng, which serves one request at a time; four
rng instances lift the ten workers to about 33 hashes/s.

Chapter 2, what a serverless platform does: rng goes back to one instance and
is handed to the autoscaler (`brkcoin scale rng=auto`). Knative's KPA sees the
requests waiting at rng and scales it with no other command; then the same with
the HPA's rule on CPU, which never scales rng: it only sleeps.

It starts its own local platform in the lesson's shape (`brkcoin up --lesson`:
one rng instance at concurrency 1, demo delays 0.1 s), steps through the
lesson, prints a table of what it measured (with hashes per instance-second,
what Cloud Run bills) and writes a plot of the speed against time with the
steps, rng's autoscaling decisions and its cold starts marked (SVG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
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
SETTLE = TICK + 2  # seconds before a step is measured: the next tick takes its fan-out
CHAPTER_2_WATCH = 60.0  # seconds after the autoscaler's first 20 in which rng should hold
QUICK = 20.0  # seconds in which the autoscaler should have found rng


@dataclass(frozen=True)
class Step:
    label: str
    workers: int
    rng: int | str  # rng instances, pinned; or the autoscaler's kind: "kpa", "cpu"
    expected: float  # hashes/s, as the slides have it

    @property
    def autoscaled(self) -> bool:
        return isinstance(self.rng, str)


STEPS = (
    # Chapter 1: a human finds the bottleneck and scales it.
    Step("1 worker", 1, 1, 3.3),
    Step("2 workers", 2, 1, 6.7),
    Step("3 workers", 3, 1, 10.0),
    Step("10 workers: plateau", 10, 1, 10.0),
    Step("scale rng to 4", 10, 4, 33.3),
    # Chapter 2: rng back at 1, handed to the platform: Knative's KPA finds it;
    # the HPA's rule on CPU never does, since rng only sleeps.
    Step("rng=auto (kpa)", 10, "kpa", 33.3),
    Step("rng=auto (cpu)", 10, "cpu", 10.0),
)


@dataclass
class Sample:
    at: float  # seconds since the lesson began
    hashes: int
    rng: int  # rng instances ready
    rng_wanted: int
    instance_seconds: float  # of every function so far


@dataclass
class Measured:
    step: Step
    started: float  # seconds since the lesson began
    measured_from: float
    speed: float
    windows: float  # the 5 s windows' largest distance from the mean, as a share of it
    per_instance_second: float  # hashes per instance-second (what Cloud Run bills)
    stats: dict[str, Any]
    found: str = ""  # chapter 2: how the autoscaler did


@dataclass
class Mark:
    at: float
    kind: str  # "decision" or "cold start"
    text: str


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="brkcoin-lesson-"))
    ports = {name: free_port() for name in FUNCTIONS}
    platform = Platform(data_dir, ports=ports, redis_port=free_port(), env=dict(LESSON_DELAYS),
                        scale={"rng": 1, "hasher": 1, "webui": 1}, concurrency={"rng": 1})
    print(f"brkcoin lesson: starting the platform in the lesson's shape (data in {data_dir})",
          flush=True)
    trigger = WorkerTrigger(platform.urls["worker"], 1, {}, log=lambda line: None)
    try:
        measured, samples, marks = serve(platform, Scheduler(Interval(TICK), trigger),
                                         lambda: _steps(platform, trigger, args.step))
    except Stopped:
        return 130
    print(table(measured))
    args.plot.write_text(svg(samples, measured, marks))
    print(f"plot: {args.plot}")
    return 0


class _Watch:
    """Samples the wallet and the platform once a second; marks rng's decisions
    and cold starts."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.client = redis.asyncio.Redis.from_url(platform.redis_url, socket_timeout=2)
        self.began = time.monotonic()
        self.samples: list[Sample] = []
        self.marks: list[Mark] = []
        self.decision: object = None
        self.cold_starts = platform.services["rng"].started_count

    def now(self) -> float:
        return time.monotonic() - self.began

    async def sample(self) -> Sample:
        reading = await wallet.read_async(self.client)
        rng = self.platform.services["rng"]
        at = self.now()
        total = sum(s.instance_seconds(time.monotonic())
                    for s in self.platform.services.values())
        sample = Sample(at, reading["hashes"], rng.ready, rng.wanted, total)
        self.samples.append(sample)
        if rng.decision is not self.decision and rng.decision is not None:
            self.decision = rng.decision
            self.marks.append(Mark(at, "decision", f"rng {rng.decision['from']} \u2192 "
                                                   f"{rng.decision['to']}"))
        for _ in range(rng.started_count - self.cold_starts):
            self.marks.append(Mark(at, "cold start", "rng"))
        self.cold_starts = rng.started_count
        return sample

    async def until(self, end: float) -> list[Sample]:
        taken = []
        while self.now() < end:
            taken.append(await self.sample())
            await asyncio.sleep(1.0)
        return taken


async def _steps(platform: Platform, trigger: WorkerTrigger,
                 seconds: float) -> tuple[list[Measured], list[Sample], list[Mark]]:
    watch = _Watch(platform)
    measured = []
    for step in STEPS:
        trigger.fanout = step.workers
        started = watch.now()
        if step.autoscaled:
            print(f"[{started:5.0f} s] {step.label}: rng back to 1 instance, "
                  f"{step.workers} workers", flush=True)
            platform.scale("rng", 1)
            while platform.services["rng"].ready != 1 or len(platform.services["rng"].live) != 1:
                await watch.until(watch.now() + 1)
            await watch.until(watch.now() + 5)  # the plateau, again
            handed = watch.now()
            platform.autoscale("rng", replace(FUNCTIONS["rng"].scaling, kind=str(step.rng)))
            print(f"[{handed:5.0f} s] brkcoin scale rng=auto ({step.rng}): no other command",
                  flush=True)
            length = QUICK + CHAPTER_2_WATCH if step.rng == "kpa" else seconds
            taken = await watch.until(handed + length)
            window = [s for s in taken if s.at >= handed + QUICK]
            found = found_by_autoscaler(taken, handed)
        else:
            platform.scale("rng", int(step.rng))
            print(f"[{started:5.0f} s] {step.label}: {step.workers} worker(s), "
                  f"{step.rng} rng instance(s)", flush=True)
            taken = await watch.until(started + seconds)
            window = [s for s in taken if s.at >= started + SETTLE]
            found = ""
        stats = await asyncio.to_thread(_stats, platform.urls["webui"])  # a blocking read
        first, last = window[0], window[-1]
        speed = (last.hashes - first.hashes) / (last.at - first.at)
        billed = last.instance_seconds - first.instance_seconds
        measured.append(Measured(step, started, first.at, speed, steadiness(window),
                                 (last.hashes - first.hashes) / billed if billed else 0.0,
                                 stats, found))
        print(f"         {speed:.1f} hashes/s (the slides: {step.expected:g}); "
              f"{_latencies(stats)}" + (f"; {found}" if found else ""), flush=True)
    await watch.client.aclose()
    return measured, watch.samples, watch.marks


def speeds(samples: list[Sample], span: float = 5.0) -> list[tuple[float, float]]:
    """(time, hashes/s over the `span` seconds before it), a point a sample."""
    result = []
    for i, sample in enumerate(samples):
        j = i
        while j > 0 and sample.at - samples[j - 1].at <= span + 0.5:
            j -= 1
        if sample.at - samples[j].at >= span - 0.5:
            result.append((sample.at, (sample.hashes - samples[j].hashes)
                           / (sample.at - samples[j].at)))
    return result


def steadiness(window: list[Sample], span: float = 5.0) -> float:
    """How far the speed of any `span`-second window (back to back) strays from
    the mean, as a share of the mean: 0.1 is "every 5 s within 10 %"."""
    if len(window) < 2 or window[-1].hashes == window[0].hashes:
        return 0.0
    mean = (window[-1].hashes - window[0].hashes) / (window[-1].at - window[0].at)
    worst, begin = 0.0, window[0]
    for sample in window[1:]:
        if sample.at - begin.at >= span - 0.01:
            speed = (sample.hashes - begin.hashes) / (sample.at - begin.at)
            worst = max(worst, abs(speed - mean) / mean)
            begin = sample
    return worst


def found_by_autoscaler(taken: list[Sample], handed: float) -> str:
    """Chapter 2 in a line: how soon rng had 4 instances and the speed 30 hashes/s,
    how often its wanted count changed after that, and the most it had."""
    at_four = next((s.at - handed for s in taken if s.rng >= 4), None)
    at_speed = next((t - handed for t, v in speeds(taken) if v >= 30 and t >= handed), None)
    later = [s.rng_wanted for s in taken if s.at >= handed + QUICK]
    changes = sum(1 for a, b in zip(later, later[1:], strict=False) if a != b)
    most = max((s.rng for s in taken), default=0)

    def when(value: float | None) -> str:
        return "never" if value is None else f"after {value:.0f} s"

    return (f"rng at 4+ instances {when(at_four)}, 30 hashes/s {when(at_speed)}, "
            f"at most {most}; {changes} change(s) of its count in the "
            f"{len(later)} s after the first {QUICK:.0f}")


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
    lines = ["| step | workers | rng instances | hashes/s | the slides | 5 s windows within |"
             " hashes per instance-second | rng p50 / p95 | hasher p50 / p95 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in measured:
        functions = m.stats.get("functions", {})

        def latency(name: str, functions: dict[str, Any] = functions) -> str:
            f = functions.get(name, {})
            if f.get("p50_ms") is None:
                return "-"
            return f"{f['p50_ms']:g} / {f['p95_ms']:g} ms"

        rng = m.step.rng if isinstance(m.step.rng, int) else f"auto ({m.step.rng})"
        lines.append(f"| {m.step.label} | {m.step.workers} | {rng} | {m.speed:.1f} | "
                     f"{m.step.expected:g} | \u00b1{100 * m.windows:.0f} % | "
                     f"{m.per_instance_second:.2f} | {latency('rng')} | {latency('hasher')} |")
    lines += [f"\n{m.step.label}: {m.found}" for m in measured if m.found]
    return "\n".join(lines)


def svg(samples: list[Sample], measured: list[Measured], marks: list[Mark] | None = None,
        width: int = 900, height: int = 320) -> str:
    """Speed (hashes/s over 5 s) against time, the steps marked, and rng's
    autoscaling decisions (orange) and cold starts (blue): a plain SVG."""
    points_at = speeds(samples)
    end = samples[-1].at if samples else 1.0
    top = max([v for _, v in points_at] + [10.0]) * 1.15
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
    for mark in marks or []:
        if mark.kind == "decision":
            out.append(f'<line x1="{x(mark.at):.1f}" y1="{bottom}" x2="{x(mark.at):.1f}" '
                       f'y2="{bottom - 12}" stroke="#d4700a" stroke-width="2">'
                       f'<title>{mark.text}</title></line>')
        else:
            out.append(f'<circle cx="{x(mark.at):.1f}" cy="{bottom - 4}" r="3" '
                       f'fill="#1f6feb"><title>cold start: {mark.text}</title></circle>')
    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points_at)
    out.append(f'<polyline points="{points}" fill="none" stroke="#1a7f37" stroke-width="2"/>')
    out.append(f'<text x="{left}" y="{height - 8}">seconds (0 to {end:.0f}); '
               'hashes per second over 5 s; orange: rng autoscaling decisions, '
               'blue: rng cold starts</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
