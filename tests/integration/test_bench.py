"""`brkcoin bench` runs as printed and reports what it says it measures. No speed
is asserted here: speed is the bench's job, and this machine is too noisy for a
timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from brkcoin.layout import FUNCTIONS

BRKCOIN = str(Path(sys.executable).with_name("brkcoin"))


def test_first_answers_only_reports_each_function_the_reference_and_the_aio_floor() -> None:
    done = subprocess.run(
        [BRKCOIN, "bench", "--first-answers-only", "--starts", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["first_answer_starts"] == 1
    assert set(report["first_answer_ms"]) == set(FUNCTIONS)
    reference = report["reference"]["first_answer_ms"]
    floor = report["aio_floor_first_answer_ms"]
    worst = max(report["first_answer_ms"].values())
    assert all(ms > 0 for ms in (reference, floor, worst))
    assert report["ratios"] == {
        "first_answer_over_reference": round(worst / reference, 2),
        "aio_floor_first_answer_over_reference": round(floor / reference, 2),
        "first_answer_over_aio_floor": round(worst / floor, 2),
    }
