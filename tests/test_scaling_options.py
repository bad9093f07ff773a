"""`brkcoin up --autoscale`: Knative's names onto the spec's Scaling, each value checked."""

from __future__ import annotations

import argparse

import pytest

from brkcoin.layout import FUNCTIONS
from brkcoin.scaling_options import parse


def test_knatives_names_set_the_spec_per_function_and_for_all() -> None:
    asked = parse(["all:window=6s,scale-to-zero-grace-period=500ms",
                   "rng:class=cpu,target-utilization-percentage=50,min-scale=1,max-scale=4"],
                  {"webui": (1, 10)})
    rng, hasher = asked.scaling["rng"], asked.scaling["hasher"]
    assert (rng.kind, rng.stable_window, rng.target_utilization) == ("cpu", 6.0, 0.5)
    assert (hasher.kind, hasher.stable_window, hasher.scale_to_zero_grace) == ("kpa", 6.0, 0.5)
    assert asked.bounds == {"webui": (1, 10), "rng": (1, 4), "hasher": (0, 10), "worker": (0, 10)}
    assert parse([], {}).scaling == {n: f.scaling for n, f in FUNCTIONS.items()}


@pytest.mark.parametrize(("item", "message"), [
    ("rng", "--autoscale takes NAME:KEY=VALUE"),
    ("miner:window=6s", "--autoscale takes NAME:KEY=VALUE"),
    ("rng:colour=red", "--autoscale rng: no setting 'colour'"),
    ("rng:window=0.5s", "--autoscale rng:window takes a duration from 1s to 1h, got '0.5s'"),
    ("rng:window=\u0661\u0660", "rng:window takes a duration"),  # Arabic-Indic digits
    ("rng:window=1e9", "rng:window takes a duration"),
    ("rng:class=CPU", "rng:class takes kpa or cpu"),
    ("rng:min-scale=-1", "rng:min-scale takes a whole number from 0 to 1000"),
    ("rng:max-scale=1.5", "rng:max-scale takes a whole number from 1 to 1000"),
    ("rng:min-scale=5,max-scale=2", "rng: min-scale 5 is over max-scale 2"),
    ("rng:panic-threshold-percentage=100", "takes a percentage from 110 to 1000"),
    ("rng:max-scale-down-rate=1", "takes a rate above 1"),
])
def test_a_bad_setting_is_named(item: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse([item], {})
    assert message in str(refused.value)
