"""What every deploy target shares: clear errors, tool checks, quiet probes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from brkcoin.layout import ROOT

CONTAINER_DIR = ROOT / "infra" / "container"
K8S_DIR = ROOT / "infra" / "k8s"
AWS_DIR = ROOT / "infra" / "aws"


class DeployError(RuntimeError):
    """A problem the user can fix (missing tool, input or endpoint): shown without a traceback."""


def require_tool(name: str, hint: str) -> str:
    """Path of `name` on PATH, or a DeployError that says how to get it."""
    found = shutil.which(name)
    if not found:
        raise DeployError(f"`{name}` is not installed or not on PATH: {hint}")
    return found


def capture(command: Sequence[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command quietly and return its result, whatever its exit code."""
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)
