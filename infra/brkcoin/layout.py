"""The functions: where each folder is, how it is started, and how a platform runs it.

One spec per function, read by every target (the local platform, containers,
Kubernetes/Knative, AWS, Google Cloud), so a setting is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Function:
    name: str  # the function folder, and the --target of its main.py
    folder: Path
    port: int  # default local port
    # Requests one instance serves at once (Cloud Run's --concurrency, Knative's
    # containerConcurrency); the platform holds the rest in line.
    concurrency: int = 80
    max_instances: int = 10  # how far the platform may scale it out

    @property
    def source(self) -> Path:
        return self.folder / "main.py"


FUNCTIONS = {
    f.name: f
    for f in (
        Function("webui", ROOT / "webui", 8000),
        Function("rng", ROOT / "functions" / "rng", 8001),
        Function("hasher", ROOT / "functions" / "hasher", 8002),
        # An invocation mines for most of a tick and keeps a core busy at full
        # speed: a few per instance, more instances as the fan-out grows.
        Function("worker", ROOT / "functions" / "worker", 8003, concurrency=8),
    )
}
# The CloudEvent trigger lives in the worker folder beside the HTTP one; it is an
# HTTP function that reads CloudEvents itself (see functions/worker/main.py).
WORKER_EVENT = Function("worker_event", ROOT / "functions" / "worker", 8004, concurrency=8)
