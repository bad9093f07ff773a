"""Helpers of the deploy tests (a module of its own: `conftest` is an ambiguous name
when the whole suite runs)."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from brkcoin.layout import ROOT

NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}
VENVS = ROOT / "tests" / "artifacts" / "venvs"


def wait_http(url: str, timeout: float = 30) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer: the server is up
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on {url} in {timeout}s")


def build_venv(requirements: Path) -> Path:
    """A venv with exactly `requirements` installed; reused while the file is unchanged."""
    digest = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:16]
    venv = VENVS / digest
    VENVS.mkdir(parents=True, exist_ok=True)
    with FileLock(venv.with_suffix(".lock")):  # two test processes may want it at once
        if (venv / ".complete").exists():
            return venv
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)],
                       check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                        "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(requirements)], check=True)
        (venv / ".complete").touch()
    return venv


def spawn_in(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server as the image would (its own cwd and env); stop it with processes.stop."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def lesson_commands(tool: str) -> list[list[str]]:
    """The README's commands of the scaling lesson on the other targets that start with
    `tool` (e.g. "kubectl"), split as the shell splits them, comments dropped."""
    text = (ROOT / "README.md").read_text()
    start = text.index("The same steps on the other targets:")
    end = text.index("## Deploying", start)
    return [shlex.split(line, comments=True) for line in text[start:end].splitlines()
            if line.strip().startswith(f"{tool} ")]
