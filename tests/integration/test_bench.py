"""`brkcoin bench` runs as printed and reports what it says it measures. No speed
is asserted here: speed is the bench's job, and this machine is too noisy for a
timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from brkcoin.layout import FUNCTIONS

BRKCOIN = str(Path(sys.executable).with_name("brkcoin"))


@pytest.mark.alone
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


@pytest.mark.alone
def test_door_only_measures_the_door_beside_the_direct_path_in_turns() -> None:
    done = subprocess.run(
        [BRKCOIN, "bench", "--door-only", "--seconds", "0.5", "--rounds", "1"],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    door = report["door"]
    assert door["instances"] == {"rng": 1, "hasher": 1}
    assert door["door_loop"] == "uvloop.Loop"  # as `brkcoin up` runs the doors
    assert door["rounds"] == 1
    assert [(c["batch"], c["concurrency"]) for c in door["cases"]] == [(1, 1), (1, 8)]
    for case in door["cases"]:
        direct, through = case["direct_hashes_per_s"], case["door_hashes_per_s"]
        assert len(direct) == len(through) == 1
        assert direct[0] > 0 and through[0] > 0, case  # both paths mined
        assert case["errors"] == 0, case
        (ratio,) = case["round_ratios"]  # the rates shown are rounded: a hair apart
        assert abs(ratio - through[0] / direct[0]) < 0.006
        assert case["door_over_direct"] == ratio
        assert case["door_cpu_us_per_request"] > 0
        assert case["door_cpu_ms_per_hash"] > 0 and case["direct_cpu_ms_per_hash"] > 0
        assert case["other_load_cores"] >= 0
    assert report["ratios"] == {
        f"door_over_direct_batch1_c{c['concurrency']}": c["door_over_direct"]
        for c in door["cases"]
    }
    assert "first_answer_ms" not in report  # the door alone, quickly
