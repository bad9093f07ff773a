"""A stand-in `gcloud` for the deploy tests. The real one cannot run here (no Google
Cloud project, no credentials, no network), so this tiny script takes its place on
PATH: it logs each argv as one JSON line and prints plausible values where the plan
reads one (the Redis host, service URLs, stale scheduler jobs); `describe` succeeds
only when EXISTS=1."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from brkcoin.deploy import gcp
from brkcoin.deploy.plan import Operation
from brkcoin.deploy.shell import Each, Step, argv, items_of

HOST = "10.0.0.3"
SCRIPT = """#!{python} -S
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["auth", "list"]:
    print("me@example.com")
elif "--format=value(host)" in args:
    print(os.environ["REDIS_HOST_VALUE"])
elif "--format=value(status.url)" in args:
    print("https://" + args[3] + "-abc123-ew.a.run.app")
elif args[:3] == ["scheduler", "jobs", "list"]:
    print(os.environ["JOBS_VALUE"])
elif "describe" in args:
    sys.exit(0 if os.environ["EXISTS"] == "1" else 1)
"""


@dataclass(frozen=True)
class FakeGcloud:
    bin_dir: Path
    log: Path

    @classmethod
    def install(cls, directory: Path) -> FakeGcloud:
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "gcloud"
        fake.write_text(SCRIPT.format(python=sys.executable))
        fake.chmod(0o755)
        return cls(bin_dir, directory / "gcloud.log")

    def env(self, exists: bool = False, host: str = HOST, jobs: str = "") -> dict[str, str]:
        return {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "GCLOUD_LOG": str(self.log),
                "EXISTS": "1" if exists else "0", "REDIS_HOST_VALUE": host,
                "JOBS_VALUE": jobs}

    def calls(self) -> list[list[str]]:
        """Every argv gcloud was called with so far (without the `gcloud` itself)."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run_script(self, script: str, exists: bool = False, host: str = HOST,
                   jobs: str = "") -> list[list[str]]:
        """Save a printed plan as a user would, check that bash parses it, run it with
        `bash -e` in the folder the fake lives in, and return the gcloud calls."""
        path = self.bin_dir.parent / "plan.sh"
        path.write_text(script)
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
        subprocess.run(["bash", "-e", str(path)], cwd=path.parent,
                       env=self.env(exists, host, jobs), check=True, timeout=120)
        return self.calls()


def expected_calls(operations: tuple[Operation, ...] | list[Operation], exists: bool,
                   host: str = HOST, jobs: str = "") -> list[list[str]]:
    """The gcloud calls the plan must make against the fake, the values it prints put in."""
    values = {gcp.REDIS_HOST.name: host, gcp.STALE_JOBS.name: jobs}
    calls = []
    for operation in operations:
        if isinstance(operation, Each):
            for item in items_of(jobs):
                calls.append(argv(operation.command, {**values, operation.item.name: item}))
            continue
        assert isinstance(operation, Step)
        if operation.check:
            calls.append(argv(operation.check, values))
            runs = (exists if operation.only_if_exists
                    else not exists or bool(operation.if_exists))
            if not runs:
                continue
        command = operation.if_exists if exists and operation.if_exists else operation.command
        calls.append(argv(command, values))
        if operation.capture and operation.capture.name not in values:
            values[operation.capture.name] = f"https://{calls[-1][4]}-abc123-ew.a.run.app"
    return [call[1:] for call in calls]
