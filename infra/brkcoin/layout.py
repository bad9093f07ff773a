"""The functions: one spec each, read by every target.

The local platform, the deploy targets (compose, Kubernetes/Knative, AWS Lambda,
Cloud Run) and the tests all take a function's settings from here, so each is
written down once. Targets that render in code (AWS, Cloud Run, the local
platform) read the spec directly; the static files (the Dockerfile, compose.yaml,
infra/k8s/) are checked against it by tests/deploy/test_spec_files.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PORT = 8080  # what a function listens on in a container or on a platform


def url_variable(name: str) -> str:
    """The variable that holds where a function (or Redis) answers: rng -> RNG_URL."""
    return f"{name.upper()}_URL"


@dataclass(frozen=True)
class Scaling:
    """How a platform scales a function on its load: Knative's autoscaler settings,
    with Knative's documented defaults. The local platform (platform/autoscaler.py)
    runs them all, per function; Knative gets them as per-revision annotations,
    except tick and the scale rates, which are cluster-wide there (config-autoscaler,
    left at these defaults); Cloud Run and Lambda get the parts they have (min,
    max, concurrency)."""

    # "kpa": Knative's Pod Autoscaler, on requests in flight and waiting;
    # "cpu": the HPA's rule on CPU utilisation (never to zero).
    kind: str = "kpa"
    target_utilization: float = 0.7  # of the per-instance concurrency, the KPA's target
    stable_window: float = 60.0  # seconds the stable average covers
    panic_window_percentage: float = 10.0  # of the stable window: 6 s
    panic_threshold_percentage: float = 200.0  # panic at 2 x the current instances
    max_scale_up_rate: float = 1000.0  # per decision, x the ready instances
    max_scale_down_rate: float = 2.0  # per decision, / the ready instances
    tick: float = 2.0  # seconds between decisions
    # Seconds at zero wanted before the last instance goes: Knative's 30 s grace;
    # rendered as its per-revision scale-to-zero-pod-retention-period.
    scale_to_zero_grace: float = 30.0
    # The cpu kind's target: percent of the CPU request on Kubernetes, of one core
    # on the local platform.
    cpu_target_percentage: float = 80.0

    @property
    def panic_window(self) -> float:
        return self.stable_window * self.panic_window_percentage / 100


@dataclass(frozen=True)
class Function:
    name: str  # the --target in the folder's main.py (the folder's name, but worker_event)
    folder: Path
    port: int  # default local port
    public: bool = False  # reachable from outside; every other function is private
    # What it calls, by name ("redis" or a function): targets give it each one's URL
    # in url_variable(name).
    needs: tuple[str, ...] = ()
    # The settings it reads, with the value every target gives it: the function's
    # own default (tests/deploy/test_spec.py checks that they agree).
    env: tuple[tuple[str, str], ...] = ()
    # Requests one instance serves at once (Cloud Run's --concurrency, Knative's
    # containerConcurrency); the platform holds the rest in line.
    concurrency: int = 80
    timeout: int = 30  # seconds a request may take before the platform ends it
    memory: int = 512  # MiB per instance (Cloud Run's second generation needs 512)
    min_instances: int = 0  # scale to zero between uses
    max_instances: int = 10  # how far the platform may scale it out
    scaling: Scaling = Scaling()  # how it scales between the two

    @property
    def source(self) -> Path:
        return self.folder / "main.py"

    @property
    def wiring(self) -> tuple[str, ...]:
        """The URL variables it needs, e.g. ("REDIS_URL", "RNG_URL")."""
        return tuple(url_variable(n) for n in self.needs)

    @property
    def defaults(self) -> dict[str, str]:
        return dict(self.env)

    def command(self, port: int = PORT) -> list[str]:
        """The plain Functions Framework command, run from the repository root."""
        source = self.source.relative_to(ROOT).as_posix()
        return ["functions-framework", "--target", self.name, "--source", source,
                "--port", str(port)]

    def timeout_for(self, seconds: float = 0) -> int:
        """The request timeout for an invocation that works `seconds` (a mining
        tick), with a minute beyond it to flush and answer; else the usual one."""
        return max(self.timeout, math.ceil(seconds) + 60) if seconds else self.timeout


@dataclass(frozen=True)
class Tick:
    """The schedule every target gives the worker: each tick invokes it (N times
    with a fan-out of N), and each invocation mines most of the minute, so the rate
    stays continuous."""

    cron: str = "* * * * *"
    seconds: float = 55


TICK = Tick()
DEMO_LATENCY = "0.1"  # seconds, as the original DockerCoins (0 turns it off)

FUNCTIONS = {
    f.name: f
    for f in (
        Function("webui", ROOT / "webui", 8000, public=True,
                 needs=("redis", "rng", "hasher", "worker")),  # it probes all of them
        Function("rng", ROOT / "functions" / "rng", 8001,
                 env=(("RNG_DELAY", DEMO_LATENCY),)),
        Function("hasher", ROOT / "functions" / "hasher", 8002,
                 env=(("HASHER_DELAY", DEMO_LATENCY),)),
        # An invocation mines for most of a tick and keeps a core busy at full
        # speed: a few per instance, more instances as the fan-out grows.
        Function("worker", ROOT / "functions" / "worker", 8003,
                 needs=("redis", "rng", "hasher"), env=(("WORKER_DELAY", DEMO_LATENCY),),
                 concurrency=8, timeout=120),
    )
}
# The CloudEvent trigger lives in the worker folder beside the HTTP one; it is an
# HTTP function that reads CloudEvents itself (see functions/worker/main.py).
WORKER_EVENT = replace(FUNCTIONS["worker"], name="worker_event", port=8004)
# Worker invocations one tick may start: as many as its instances can take at once.
MAX_WORKERS = FUNCTIONS["worker"].concurrency * FUNCTIONS["worker"].max_instances
