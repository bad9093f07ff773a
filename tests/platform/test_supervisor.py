"""The control plane's bookkeeping that needs no process: log pruning."""

from __future__ import annotations

from pathlib import Path

from brkcoin.platform.supervisor import KEEP_LOGS, Platform


def test_the_logs_of_ended_instances_are_pruned_to_the_last_few(tmp_path: Path) -> None:
    platform = Platform(tmp_path, redis_url="redis://127.0.0.1:1/0")
    logs = platform.logs
    (logs / "run").mkdir(parents=True)
    for n in range(1, 31):
        (logs / f"rng-{n}.log").write_text("a line\n")
        (logs / "run" / f"rng-{n}").mkdir()
    (logs / "hasher-1.log").write_text("another function's\n")
    (logs / "rng-x.log").write_text("not ours to judge\n")
    platform._prune_logs(platform.services["rng"])  # none of them is live
    kept = sorted(p.name for p in logs.glob("rng-*.log"))
    assert kept == sorted([f"rng-{n}.log" for n in range(31 - KEEP_LOGS, 31)] + ["rng-x.log"])
    assert list((logs / "run").iterdir()) == []
    assert (logs / "hasher-1.log").exists()
