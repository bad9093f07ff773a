"""The static files agree with the spec (brkcoin.layout): the Dockerfile, compose.yaml
and the Kubernetes manifests, read back by spec_check.py. And the check can fail:
a copy of the files with one value changed, in one file, is caught, by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from spec_check import check_all

from brkcoin.layout import ROOT

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
