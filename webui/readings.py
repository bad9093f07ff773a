"""What the worker records for the page, read back: the counter's history and the
per-flush telemetry (see the worker's wallet.py and telemetry.py), checked entry by
entry and added up. Pure functions over what Redis returned, so main.py keeps the I/O.

A malformed entry is skipped, never fatal: one bad line must not hide the rest.
An entry too long to be the worker's arrives as None (main.py leaves it in Redis).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

MAX_COUNT = 2**63  # counts are Redis/Python integers; anything larger is not ours
MAX_LINE = 8 * 1024  # a telemetry line is ~1 KiB, under 2 KiB with every count at its largest
MAX_POINT = 64  # a history point, "[epoch second, hashes]", is under 32 bytes
MAX_REPORT = 64 * 1024  # the platform's report is ~1 KiB
UPSTREAMS = ("rng", "hasher")
UPSTREAM_FIGURES = ("calls_per_s", "errors_per_s", "p50_ms", "p95_ms")
WORKER_FIGURES = ("instances", "invocations", "loops", "hashes_per_s")
# A running invocation flushes a line at least once a second (the worker's
# FLUSH_INTERVAL) while its calls complete; half a second more for a slow flush.
# The invocations counted are those running this long before the newest line:
# by then every one still running has flushed again, so none is missed, and one
# that ended is never counted beside its successor (see running_invocations).
RUNNING_LOOKBACK = 1.5
MAX_INTERVAL = 3600.0  # a line's `interval`, seconds since the invocation's last flush


class Malformed(ValueError):
    """An entry that is not what the worker writes."""


def _refuse_constant(name: str) -> None:
    raise Malformed(f"{name} is not JSON")  # NaN, Infinity: json.loads would take them


def _json(raw: bytes | str) -> object:
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise Malformed("not JSON") from e


def _count(value: object) -> int:
    """A non-negative integer count (a JSON true is no count)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNT:
        raise Malformed(f"not a count: {value!r}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        return 0.0
    return seconds if 0 <= seconds <= MAX_INTERVAL else 0.0  # NaN fails both


def _text(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise Malformed("not a short text")
    return value


# ---- hashes:history ----


def history_point(entry: bytes | None) -> list[int] | None:
    """`[epoch second, hashes]` as the worker writes it; None when malformed."""
    if entry is None:
        return None
    try:
        point = _json(entry)
        if not (isinstance(point, list) and len(point) == 2):
            return None
        return [_count(point[0]), _count(point[1])]
    except Malformed:
        return None


# ---- brkcoin:stats ----


def _bounds(value: object) -> list[float]:
    if not (isinstance(value, list) and value):
        raise Malformed("bounds_ms is not a list of bounds")
    bounds = []
    for bound in value:
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise Malformed("a bound is not a number")
        try:
            bounds.append(float(bound))
        except OverflowError as e:  # an integer beyond any float
            raise Malformed("a bound is not finite") from e
    if not all(math.isfinite(b) and b > 0 for b in bounds) or bounds != sorted(set(bounds)):
        raise Malformed("bounds_ms is not increasing")
    return bounds


class Calls:
    """One upstream's calls as one line reports them."""

    def __init__(self, value: object, bounds: list[float]) -> None:
        if not isinstance(value, dict):
            raise Malformed("not an upstream's calls")
        buckets = value.get("buckets")
        # One bucket per bound, then the overflow bucket.
        if not (isinstance(buckets, list) and len(buckets) == len(bounds) + 1):
            raise Malformed("buckets do not match bounds_ms")
        self.calls = _count(value.get("calls"))
        self.errors = _count(value.get("errors"))
        # The overflow bucket is keyed by infinity: above every bound.
        self.histogram = dict(zip([*bounds, math.inf], map(_count, buckets), strict=True))


class Line:
    """One flush's telemetry line."""

    def __init__(self, raw: bytes | None) -> None:
        if raw is None or len(raw) > MAX_LINE:
            raise Malformed("too long")
        entry = _json(raw)
        if not isinstance(entry, dict):
            raise Malformed("not an object")
        self.instance = _text(entry.get("instance"))
        self.invocation = _text(entry.get("invocation"))
        self.loops = _count(entry.get("loops"))
        self.hashes = _count(entry.get("hashes"))
        # Seconds the line covers: since the invocation's previous line, or its start.
        # Only the count of running invocations uses it; without it (a bad value)
        # the invocation is taken to start at this line.
        self.interval = _seconds(entry.get("interval"))
        bounds = _bounds(entry.get("bounds_ms"))
        self.upstreams = {name: Calls(entry.get(name), bounds) for name in UPSTREAMS}


def percentile(histogram: dict[float, int], share: float) -> float | None:
    """The bucket bound under which `share` of the timed calls fall, as the worker
    computes it for one line (None: no timed call; the overflow bucket reports
    the last bound). Over the sum of many lines' buckets it is the percentile of
    all their calls, which no average of per-line percentiles would be."""
    total = sum(histogram.values())
    if not total:
        return None
    last_bound = max(bound for bound in histogram if bound != math.inf)
    seen = 0
    for bound in sorted(histogram):
        seen += histogram[bound]
        if seen >= share * total:
            return min(bound, last_bound)
    raise AssertionError("unreachable: the loop reaches the total")


def _rate(count: int, window: float) -> float:
    return round(count / window, 3)


def running_invocations(lines: list[tuple[Line, float]]) -> dict[str, int]:
    """The invocations running RUNNING_LOOKBACK seconds before the newest of
    `lines` (line, Redis time of its flush; oldest first), with their loops.

    A line says nothing of whether its invocation has ended, so no count at the
    newest line can be right: the invocations of the tick before, whose last
    lines came a second earlier, look just like running ones between two
    flushes. A moment a little earlier is known exactly: an invocation ran then
    if it had begun (its first line's flush less the `interval` the line covers)
    and flushed again after it. So a tick's invocations are never counted beside
    the next tick's, which the distinct invocations of the window did (twice the
    fan-out for a few seconds each tick). The price: an invocation shows
    RUNNING_LOOKBACK seconds late, and one that ran less than that not at all.
    """
    if not lines:
        return {}
    moment = lines[-1][1] - RUNNING_LOOKBACK
    began: dict[str, float] = {}
    latest: dict[str, tuple[float, int]] = {}
    for line, flushed in lines:
        began.setdefault(line.invocation, flushed - line.interval)
        latest[line.invocation] = (flushed, line.loops)  # loops: its newest line's
    return {invocation: loops for invocation, (flushed, loops) in latest.items()
            if began[invocation] <= moment < flushed}


def _scheduler_in_flight(report: dict[str, Any] | None) -> int | None:
    """The local scheduler's worker invocations in flight, when its report says so."""
    scheduler = report.get("scheduler") if report is not None else None
    value = scheduler.get("in_flight") if isinstance(scheduler, dict) else None
    try:
        return _count(value)
    except Malformed:
        return None


def instance_seconds(report: dict[str, Any] | None, name: str) -> float | None:
    """The platform's instance-seconds of function `name` (every instance's life
    added up: what Cloud Run bills); None when unknown (no report, or no number)."""
    functions = report.get("functions") if report is not None else None
    function = functions.get(name) if isinstance(functions, dict) else None
    value = function.get("instance_seconds") if isinstance(function, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)  # platform() has made every number finite and in range


def summarize(entries: list[tuple[bytes | None, float]] | None, now: float,
              window: float, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Telemetry lines (line, Redis time of its flush) of the `window` seconds up
    to `now`, added up per function; rates are per second over the window.
    None (the lines could not be read): every figure is unknown (None).

    `report`, the local platform's (see platform()), adds each function's
    `instance_seconds` (None without it) and gives the worker's `invocations`
    as its scheduler counts them in flight, which it knows for certain."""
    if entries is None:
        unknown = {name: dict.fromkeys(UPSTREAM_FIGURES) for name in UPSTREAMS}
        summary: dict[str, Any] = {"window": window, "now": now, "skipped": None,
                                   "functions": {**unknown,
                                                 "worker": dict.fromkeys(WORKER_FIGURES)}}
        return _with_platform(summary, report)
    lines: list[tuple[Line, float]] = []
    skipped = 0
    for raw, flushed in sorted(entries, key=lambda entry: entry[1]):
        if flushed <= now - window:
            continue  # read with a margin: see main.stats
        try:
            lines.append((Line(raw), flushed))
        except Malformed:
            skipped += 1
    functions: dict[str, Any] = {}
    for name in UPSTREAMS:
        calls = [line.upstreams[name] for line, _ in lines]
        histogram: Counter[float] = Counter()
        for each in calls:
            histogram.update(each.histogram)
        functions[name] = {
            "calls_per_s": _rate(sum(c.calls for c in calls), window),
            "errors_per_s": _rate(sum(c.errors for c in calls), window),
            "p50_ms": percentile(histogram, 0.50),
            "p95_ms": percentile(histogram, 0.95),
        }
    # An invocation runs `loops` mining loops all its life.
    loops = running_invocations(lines)
    functions["worker"] = {
        "instances": len({line.instance for line, _ in lines}),
        "invocations": len(loops),
        "loops": sum(loops.values()),
        "hashes_per_s": _rate(sum(line.hashes for line, _ in lines), window),
    }
    summary = {"window": window, "now": now, "functions": functions, "skipped": skipped}
    return _with_platform(summary, report)


def _with_platform(summary: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    functions = summary["functions"]
    for name, figures in functions.items():
        figures["instance_seconds"] = instance_seconds(report, name)
    in_flight = _scheduler_in_flight(report)
    if in_flight is not None:
        functions["worker"]["invocations"] = in_flight
    return summary


# ---- brkcoin:platform ----


def _report_int(text: str) -> int | None:
    if len(text) > 20:  # no count; and past 4300 digits int() would refuse the whole report
        return None
    value = int(text)
    return value if -MAX_COUNT < value < MAX_COUNT else None


def _report_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # 1e400 parses as infinity


def platform(raw: bytes) -> dict[str, Any] | None:
    """The local platform's JSON object as it wrote it; None when it writes none
    (any other target; Redis reads an absent key as b""). A number no page could
    show (1e400, NaN, 10**30) reads as None; a report that is not a JSON object
    of at most MAX_REPORT bytes raises Malformed."""
    if not raw:
        return None
    if len(raw) > MAX_REPORT:
        raise Malformed(f"holds over {MAX_REPORT} bytes, too many for the platform's report")
    try:
        value = json.loads(raw, parse_int=_report_int, parse_float=_report_float,
                           parse_constant=lambda _: None)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Malformed("holds text that is not JSON, not the platform's report") from None
    if not isinstance(value, dict):
        raise Malformed("holds JSON that is not an object, not the platform's report")
    return value
