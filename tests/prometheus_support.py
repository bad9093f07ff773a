"""A real Prometheus server for the tests of the shipped scrape config and
dashboard (infra/observability/): found on PATH, started on a free loopback port
with its own storage, queried through its HTTP API, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from brkcoin.platform.processes import free_port, spawn, stop

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "infra" / "observability"
SCRAPE_CONFIG = OBSERVABILITY / "prometheus.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
INSTALL_HINT = ("install it with `sudo sh infra/install-prometheus.sh` "
                "(Debian: apt-get install prometheus, which brings promtool)")


def binaries() -> tuple[str, str]:
    """(prometheus, promtool) from PATH; without them the test skips, saying how
    to install them, or fails where BRKCOIN_REQUIRE_PROMETHEUS=1 (CI)."""
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        reason = f"no {' or '.join(missing)} on PATH"
        if os.environ.get("BRKCOIN_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{reason} and BRKCOIN_REQUIRE_PROMETHEUS=1; {INSTALL_HINT}",
                        pytrace=False)
        pytest.skip(f"{reason}: Prometheus tests skipped; {INSTALL_HINT}")
    return found["prometheus"], found["promtool"]  # type: ignore[return-value]


def config_for(port: int) -> dict:
    """The shipped scrape config with only its target's port changed."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    host, _, _ = static["targets"][0].rpartition(":")
    static["targets"] = [f"{host}:{port}"]
    return config


class Prometheus:
    """`prometheus` on a free loopback port, with the given config and storage in
    `folder`; its output goes to folder/prometheus.log."""

    def __init__(self, binary: str, config: dict, folder: Path) -> None:
        self.folder = folder
        self.config_file = folder / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        self.process = spawn([binary, f"--config.file={self.config_file}",
                              f"--web.listen-address=127.0.0.1:{self.port}",
                              f"--storage.tsdb.path={folder / 'data'}"], self.log)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30) -> Prometheus:
        give_up = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"prometheus exited:\n{self.output()}"
            try:
                if requests.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            assert time.monotonic() < give_up, f"prometheus not ready:\n{self.output()}"
            time.sleep(0.2)

    def api(self, path: str, **params: object) -> object:
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str, at: float, kind: str = "vector") -> list[dict]:
        """An instant query at epoch seconds `at`: its series, each with its "value"
        (a vector) or, for a range selector (kind "matrix"), its "values"."""
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert isinstance(data, dict) and data["resultType"] == kind, (expr, data)
        return data["result"]

    def targets(self) -> list[dict]:
        data = self.api("targets", state="active")
        assert isinstance(data, dict)
        return data["activeTargets"]

    def stop(self) -> None:
        stop(self.process)  # SIGTERM, then SIGKILL past 10 s


def by_label(series: list[dict], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in series}


# Grafana's own variables, as a query against the last 30 s would get them.
RATE_WINDOW = "30s"
GRAFANA_VARIABLES = {"__rate_interval": RATE_WINDOW, "__interval": "5s",
                     "__range": RATE_WINDOW}


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """Every (panel title, PromQL) in the dashboard, rows' panels included, with
    Grafana's variables put in as a Grafana would for the last 30 s."""
    panels = list(dashboard["panels"])
    found = []
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", value, expr)
            assert "$" not in expr, f"a variable the test does not know in {expr!r}"
            found.append((panel["title"], expr))
    return found


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def promtool(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)
