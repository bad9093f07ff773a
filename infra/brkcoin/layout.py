"""Where the function folders are, and how each one is started."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Function:
    name: str  # the function folder, and the --target of its main.py
    folder: Path
    port: int  # default local port
    signature: str = "http"

    @property
    def source(self) -> Path:
        return self.folder / "main.py"


FUNCTIONS = {
    f.name: f
    for f in (
        Function("webui", ROOT / "webui", 8000),
        Function("rng", ROOT / "functions" / "rng", 8001),
        Function("hasher", ROOT / "functions" / "hasher", 8002),
        Function("worker", ROOT / "functions" / "worker", 8003),
    )
}
# The CloudEvent trigger lives in the worker folder beside the HTTP one.
WORKER_EVENT = Function("worker_event", ROOT / "functions" / "worker", 8004, "cloudevent")
