"""`brkcoin up --autoscale NAME:KEY=VALUE,...`: the autoscaler's knobs per function.

The keys are Knative's own names (its per-revision annotations and the
cluster-wide `config-autoscaler` keys), so what is tried locally carries over:

    --autoscale rng:window=6s,scale-to-zero-grace-period=5s
    --autoscale all:class=cpu

`all` sets every function. Each value is checked, and an error names the
function, the key and the allowed range.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from brkcoin.layout import FUNCTIONS, Scaling


@dataclass(frozen=True)
class Knob:
    field: str  # the Scaling field, or "min"/"max" for the bounds
    read: Callable[[str], float | str]
    allowed: str  # what the error says is allowed


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def read(text: str) -> float:
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)?", text)
        if not match:
            raise ValueError
        value = float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2] or "s"]
        if not low <= value <= high:
            raise ValueError
        return value
    return read


def _number(low: float, high: float, whole: bool = False) -> Callable[[str], float]:
    def read(text: str) -> float:
        if not re.fullmatch(r"[0-9]+" if whole else r"[0-9]+(?:\.[0-9]+)?", text):
            raise ValueError
        value = float(text)
        if not low <= value <= high:
            raise ValueError
        return value
    return read


def _kind(text: str) -> str:
    if text not in ("kpa", "cpu"):
        raise ValueError
    return text


KNOBS = {
    "class": Knob("kind", _kind, "kpa or cpu"),
    "target-utilization-percentage": Knob("target_utilization", _number(1, 100),
                                          "a percentage from 1 to 100"),
    "window": Knob("stable_window", _seconds(1, 3600), "a duration from 1s to 1h"),
    "panic-window-percentage": Knob("panic_window_percentage", _number(1, 100),
                                    "a percentage from 1 to 100"),
    "panic-threshold-percentage": Knob("panic_threshold_percentage", _number(110, 1000),
                                       "a percentage from 110 to 1000"),
    "max-scale-up-rate": Knob("max_scale_up_rate", _number(1.01, 1000),
                              "a rate above 1, at most 1000"),
    "max-scale-down-rate": Knob("max_scale_down_rate", _number(1.01, 1000),
                                "a rate above 1, at most 1000"),
    "tick-interval": Knob("tick", _seconds(0.5, 60), "a duration from 0.5s to 60s"),
    "scale-to-zero-grace-period": Knob("scale_to_zero_grace", _seconds(0, 3600),
                                       "a duration from 0s to 1h"),
    "cpu-target-percentage": Knob("cpu_target_percentage", _number(1, 100),
                                  "a percentage from 1 to 100"),
    "min-scale": Knob("min", _number(0, 1000, whole=True), "a whole number from 0 to 1000"),
    "max-scale": Knob("max", _number(1, 1000, whole=True), "a whole number from 1 to 1000"),
}


@dataclass(frozen=True)
class Autoscaling:
    """What --autoscale asked, on top of the spec (or the local defaults)."""

    scaling: dict[str, Scaling]
    bounds: dict[str, tuple[int, int]]


def parse(items: list[str], bounds: dict[str, tuple[int, int]]) -> Autoscaling:
    """Every --autoscale given, in order, over the spec and `bounds` (the local
    platform's own defaults). Raises argparse.ArgumentTypeError naming the problem."""
    asked: dict[str, dict[str, Any]] = {name: {} for name in FUNCTIONS}
    for item in items:
        name, colon, settings = item.partition(":")
        if not colon or name not in (*FUNCTIONS, "all"):
            raise argparse.ArgumentTypeError(
                f"--autoscale takes NAME:KEY=VALUE,... with NAME one of "
                f"{', '.join(FUNCTIONS)} or all, got {item[:40]!r}")
        for setting in filter(None, settings.split(",")):
            key, _, text = setting.partition("=")
            knob = KNOBS.get(key)
            if knob is None:
                raise argparse.ArgumentTypeError(
                    f"--autoscale {name}: no setting {key[:40]!r}; the settings are "
                    f"{', '.join(KNOBS)}")
            try:
                value = knob.read(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"--autoscale {name}:{key} takes {knob.allowed}, got {text[:40]!r}") from None
            if knob.field == "target_utilization":
                value = float(value) / 100  # Knative's percentage; the spec's share
            for each in FUNCTIONS if name == "all" else (name,):
                asked[each][knob.field] = value
    scaling, chosen = {}, {}
    for name, function in FUNCTIONS.items():
        fields = dict(asked[name])
        low, high = bounds.get(name, (function.min_instances, function.max_instances))
        low, high = int(fields.pop("min", low)), int(fields.pop("max", high))
        if low > high:
            raise argparse.ArgumentTypeError(
                f"--autoscale {name}: min-scale {low} is over max-scale {high}")
        scaling[name] = replace(function.scaling, **fields)
        chosen[name] = (low, high)
    return Autoscaling(scaling, chosen)
