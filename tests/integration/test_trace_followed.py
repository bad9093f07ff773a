"""One trace followed through real processes: from the scheduler's tick through a
worker invocation to rng and hasher, by the trace fields of their JSON log lines
(Cloud Logging's `logging.googleapis.com/trace`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACE_FIELD, SPAN_FIELD = "logging.googleapis.com/trace", "logging.googleapis.com/spanId"


def _traced_lines(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and TRACE_FIELD in line:
            lines.append(json.loads(line))
    return lines


def test_a_callers_trace_reaches_rng_and_hasher_only_when_sampled(mining_stack) -> None:
    worker, rng, hasher = (mining_stack[n] for n in ("worker", "rng", "hasher"))
    answer = requests.post(worker.url, json={"seconds": 1.0, "batch": 4}, timeout=30,
                           headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    assert answer.status_code == 200 and answer.json()["trace"] == TRACE
    [summary] = [line for line in _traced_lines(worker.log) if "worker" in line]
    assert summary[TRACE_FIELD] == TRACE and summary[SPAN_FIELD] != SPAN  # its own span
    for upstream in (rng, hasher):
        lines = _traced_lines(upstream.log)
        assert len(lines) >= 2, upstream.log.read_text()[-2000:]
        assert {line[TRACE_FIELD] for line in lines} == {TRACE}
        assert len({line[SPAN_FIELD] for line in lines}) == len(lines)  # a span a call
        assert all(line["message"].endswith(": 200") for line in lines)
    # Not sampled by its caller: the trace id goes on, and no call is logged.
    unsampled = "0af7651916cd43dd8448eb211c80319c"
    answer = requests.post(worker.url, json={"seconds": 1.0, "batch": 4}, timeout=30,
                           headers={"traceparent": f"00-{unsampled}-{SPAN}-00"})
    assert answer.json()["trace"] == unsampled
    for upstream in (rng, hasher):
        assert unsampled not in upstream.log.read_text()


def test_a_tick_is_followed_through_its_invocation_to_rng_and_hasher(up) -> None:
    stack = up()
    stack.wait_for("brkcoin is up")
    scheduler_log = stack.data_dir / "logs" / "scheduler.log"
    give_up = time.monotonic() + 30
    while "worker 200: " not in (text := scheduler_log.read_text()
                                 if scheduler_log.exists() else ""):
        assert time.monotonic() < give_up, stack.output
        time.sleep(0.2)
    answered = text.split("worker 200: ", 1)[1].splitlines()[0]
    trace = json.loads(answered)["trace"]
    assert len(trace) == 32 and int(trace, 16)
    logs = stack.data_dir / "logs"
    summaries = [line for log in logs.glob("worker-*.log") for line in _traced_lines(log)
                 if line[TRACE_FIELD] == trace]
    assert len(summaries) == 1 and summaries[0]["worker"]["trace"] == trace
    for name in ("rng", "hasher"):
        calls = [line for log in logs.glob(f"{name}-*.log") for line in _traced_lines(log)
                 if line[TRACE_FIELD] == trace]
        assert calls, f"no {name} line of trace {trace}"
    # Each tick is a trace of its own.
    stack.wait_until(lambda s: s["scheduler"]["answers"].get("200", 0) >= 2)
    traces = {json.loads(line.split("worker 200: ", 1)[1])["trace"]
              for line in scheduler_log.read_text().splitlines() if "worker 200: " in line}
    assert len(traces) >= 2
