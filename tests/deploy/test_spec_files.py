"""The static files agree with the spec (brkcoin.layout): the Dockerfile, compose.yaml
and the Kubernetes manifests, read back by spec_check.py. And the check can fail
both ways: a copy of the files with one value changed, in one file, is caught, by
name; and so is the spec with one value changed (every Scaling field), the files
left as they are."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import spec_check
from spec_check import check_all

from brkcoin.layout import FUNCTIONS, ROOT, WORKER_EVENT, Scaling

INFRA = ROOT / "infra"


def test_the_static_files_agree_with_the_spec() -> None:
    assert check_all(INFRA) == []


MUTATIONS = {  # one value changed in one file: (file, old, new, what the check names)
    "knative rng concurrency": ("k8s/knative/rng.yaml", "containerConcurrency: 80",
                                "containerConcurrency: 64", "knative rng: containerConcurrency"),
    "knative worker timeout": ("k8s/knative/worker.yaml", "timeoutSeconds: 120",
                               "timeoutSeconds: 90", "knative worker: timeoutSeconds"),
    "knative worker-event concurrency": ("k8s/knative/worker.yaml",
                                         "containerConcurrency: 8\n      timeoutSeconds: 120\n"
                                         "      enableServiceLinks: false\n      containers:\n"
                                         "        - name: worker-event",
                                         "containerConcurrency: 4\n      timeoutSeconds: 120\n"
                                         "      enableServiceLinks: false\n      containers:\n"
                                         "        - name: worker-event",
                                         "knative worker-event: containerConcurrency"),
    "knative webui max-scale": ("k8s/knative/webui.yaml", 'max-scale: "10"', 'max-scale: "3"',
                                "knative webui: max-scale"),
    "knative hasher private": ("k8s/knative/hasher.yaml",
                               "    networking.knative.dev/visibility: cluster-local\n", "",
                               "knative hasher: public"),
    "a delay in the ConfigMap": ("k8s/base/config.yaml", 'HASHER_DELAY: "0.1"',
                                 'HASHER_DELAY: "0.2"', "knative hasher: HASHER_DELAY"),
    "the web UI's URL of the worker": ("k8s/base/config.yaml",
                                       "WORKER_URL: http://worker.brkcoin",
                                       "WORKER_URL: http://webui.brkcoin",
                                       "plain webui: the host of WORKER_URL"),
    "plain memory": ("k8s/plain/functions.yaml", "memory: 512Mi", "memory: 256Mi",
                     "plain rng: the memory limit"),
    "plain max replicas": ("k8s/plain/autoscaling.yaml", "maxReplicas: 10",
                           "maxReplicas: 12", "plain rng: maxReplicas"),
    "plain CPU target": ("k8s/plain/autoscaling.yaml", "averageUtilization: 80",
                         "averageUtilization: 70", "plain rng: metrics"),
    "plain scale-down window": ("k8s/plain/autoscaling.yaml",
                                "stabilizationWindowSeconds: 60",
                                "stabilizationWindowSeconds: 300", "plain rng: behavior"),
    "knative rng window": ("k8s/knative/rng.yaml", 'window: "60s"', 'window: "30s"',
                           "knative rng: window"),
    "knative hasher panic threshold": ("k8s/knative/hasher.yaml",
                                       'panic-threshold-percentage: "200"',
                                       'panic-threshold-percentage: "150"',
                                       "knative hasher: panic-threshold-percentage"),
    "knative worker utilisation": ("k8s/knative/worker.yaml",
                                   'target-utilization-percentage: "70"',
                                   'target-utilization-percentage: "80"',
                                   "knative worker: target-utilization-percentage"),
    "knative webui retention dropped": (
        "k8s/knative/webui.yaml",
        '        autoscaling.knative.dev/scale-to-zero-pod-retention-period: "30s"\n', "",
        "knative webui: scale-to-zero-pod-retention-period is None"),
    "knative rng target added": ("k8s/knative/rng.yaml",
                                 "        autoscaling.knative.dev/metric: concurrency\n",
                                 "        autoscaling.knative.dev/metric: concurrency\n"
                                 '        autoscaling.knative.dev/target: "56"\n',
                                 "knative rng: target is '56', the spec says None"),
    "knative hasher class": ("k8s/knative/hasher.yaml", "class: kpa.autoscaling",
                             "class: hpa.autoscaling", "knative hasher: class"),
    "a caller kept out": ("k8s/plain/networkpolicy.yaml",
                          "  name: hasher-from-callers\n  namespace: brkcoin\nspec:\n"
                          "  podSelector:\n    matchLabels:\n"
                          "      app.kubernetes.io/name: hasher\n  ingress:\n    - from:\n"
                          "        - podSelector:\n            matchLabels:\n"
                          "              app.kubernetes.io/name: worker\n",
                          "  name: hasher-from-callers\n  namespace: brkcoin\nspec:\n"
                          "  podSelector:\n    matchLabels:\n"
                          "      app.kubernetes.io/name: hasher\n  ingress:\n    - from:\n"
                          "        - podSelector:\n            matchLabels:\n"
                          "              app.kubernetes.io/name: scheduler\n",
                          "hasher is not reachable from ['worker']"),
    "the PingSource's seconds": ("k8s/knative/pingsource.yaml", '{"seconds": 55}',
                                 '{"seconds": 50}', "knative worker-tick-1: seconds"),
    "the CronJob's schedule": ("k8s/plain/cronjob.yaml", 'schedule: "* * * * *"',
                               'schedule: "*/2 * * * *"', "plain worker-tick: schedule"),
    "a compose delay": ("container/compose.yaml", "${WORKER_DELAY:-0.1}",
                        "${WORKER_DELAY:-0.5}", "compose.yaml worker: WORKER_DELAY"),
    "the compose web UI's worker URL": ("container/compose.yaml",
                                        "      WORKER_URL: http://worker:8080\n", "",
                                        "compose.yaml webui: the host of WORKER_URL"),
    "a compose network": ("container/compose.yaml", "networks: [rng, hasher, redis, worker]",
                          "networks: [rng, redis, worker]",
                          "compose.yaml worker: shares no network with hasher"),
    "compose ticks": ("container/compose.yaml", "${SECONDS_PER_TICK:-55}",
                      "${SECONDS_PER_TICK:-45}", "compose.yaml scheduler: SECONDS_PER_TICK"),
    "a Dockerfile target": ("container/Dockerfile", '"--target", "hasher"',
                            '"--target", "hashr"', "Dockerfile hasher: CMD"),
}


@pytest.mark.parametrize("mutation", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_one_changed_value_is_caught(mutation: tuple[str, str, str, str],
                                     tmp_path: Path) -> None:
    file, old, new, named = mutation
    copy = tmp_path / "infra"
    for part in ("container", "k8s"):
        shutil.copytree(INFRA / part, copy / part, ignore=shutil.ignore_patterns("test"))
    path = copy / file
    text = path.read_text()
    assert old in text, f"{file} no longer holds {old!r}: update this mutation"
    path.write_text(text.replace(old, new, 1))
    problems = check_all(copy)
    assert any(named in problem for problem in problems), problems


# One value of the spec changed, the files left as they are: (function, what
# changes: Scaling fields, or the Function's own), and what the check must name.
SPEC_CHANGES: dict[str, tuple[str, dict[str, Any], str]] = {
    "kind": ("rng", {"kind": "cpu"}, "knative rng: class"),
    "target_utilization": ("hasher", {"target_utilization": 0.8},
                           "knative hasher: target-utilization-percentage"),
    "stable_window": ("rng", {"stable_window": 30.0}, "knative rng: window"),
    "panic_window_percentage": ("worker", {"panic_window_percentage": 20.0},
                                "knative worker-event: panic-window-percentage"),
    "panic_threshold_percentage": ("webui", {"panic_threshold_percentage": 300.0},
                                   "knative webui: panic-threshold-percentage"),
    "max_scale_up_rate": ("rng", {"max_scale_up_rate": 500.0},
                          "knative rng: max-scale-up-rate (cluster-wide"),
    "max_scale_down_rate": ("hasher", {"max_scale_down_rate": 4.0},
                            "knative hasher: max-scale-down-rate (cluster-wide"),
    "tick": ("rng", {"tick": 1.0}, "knative rng: tick (fixed) (cluster-wide"),
    "scale_to_zero_grace": ("rng", {"scale_to_zero_grace": 45.0},
                            "knative rng: scale-to-zero-pod-retention-period"),
    "cpu_target_percentage": ("hasher", {"cpu_target_percentage": 70.0},
                              "plain hasher: metrics"),
    "min_instances": ("rng", {"min_instances": 1}, "knative rng: min-scale"),
    "max_instances": ("hasher", {"max_instances": 4}, "plain hasher: maxReplicas"),
    "concurrency": ("webui", {"concurrency": 40}, "knative webui: containerConcurrency"),
}
SCALING_FIELDS = {f.name for f in dataclasses.fields(Scaling)}


def test_every_scaling_field_is_changed_once() -> None:
    assert SCALING_FIELDS <= set(SPEC_CHANGES)


@pytest.mark.parametrize("change", SPEC_CHANGES.values(), ids=SPEC_CHANGES.keys())
def test_one_changed_spec_value_is_caught(change: tuple[str, dict[str, Any], str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    name, values, named = change
    function = FUNCTIONS[name]
    scaling = {k: v for k, v in values.items() if k in SCALING_FIELDS}
    own = {k: v for k, v in values.items() if k not in SCALING_FIELDS}
    changed = dataclasses.replace(function, scaling=dataclasses.replace(function.scaling,
                                                                        **scaling), **own)
    monkeypatch.setitem(FUNCTIONS, name, changed)
    if name == "worker":
        monkeypatch.setattr(spec_check, "WORKER_EVENT", dataclasses.replace(
            changed, name=WORKER_EVENT.name, port=WORKER_EVENT.port))
    problems = check_all(INFRA)
    assert any(named in problem for problem in problems), problems
