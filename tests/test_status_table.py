"""`brkcoin status`'s table, from what status.json and the wallet say: pure."""

from __future__ import annotations

from brkcoin.commands import status_table

REPORT = {
    "rate": 31.8, "hashes": 12345, "coins": 800,
    "scheduler": {"schedule": "every 10s", "fanout": 10},
    "functions": {
        "rng": {"up": True, "instances": 6, "wanted": 6, "autoscaled": True, "panic": True,
                "concurrency": 1, "in_flight": 5, "queued": 0, "restarts": 0,
                "cold_starts": 6, "cold_start_seconds": 0.41, "instance_seconds": 93.2,
                "decision": {"from": 5, "to": 6, "reason": "panic, concurrency 4.0 over 6 s"}},
        "hasher": {"up": True, "instances": 1, "wanted": 1, "autoscaled": False,
                   "concurrency": 80, "in_flight": 0, "queued": 0, "restarts": 1,
                   "cold_starts": 1, "cold_start_seconds": None, "instance_seconds": 40,
                   "decision": None},
    },
}


def test_a_row_per_function_under_a_line_of_totals() -> None:
    lines = status_table(REPORT).splitlines()
    assert lines[0] == ("31.8 hashes/s, 12,345 hashes, 800 coins; schedule every 10s, "
                        "10 invocation(s) a tick")
    assert lines[1].split()[:3] == ["NAME", "UP", "INSTANCES"]
    rng, hasher = lines[2], lines[3]
    assert rng.split()[:4] == ["rng", "yes", "6/6", "panic"]
    assert rng.endswith("5 \u2192 6: panic, concurrency 4.0 over 6 s") and "6 (0.41 s)" in rng
    assert hasher.split()[:4] == ["hasher", "yes", "1/1", "pinned"] and hasher.endswith("-")


def test_paused_and_damaged_or_older_reports_show_question_marks() -> None:
    damaged = {"rate": "fast", "hashes": None, "coins": 1e400,
               "scheduler": {"fanout": 0},
               "functions": {"rng": {"instances": "many", "decision": {"to": [1]},
                                     "cold_start_seconds": "x", "instance_seconds": True},
                             "webui": [1, 2], "worker": {}}}
    lines = status_table(damaged).splitlines()
    assert lines[0] == "? hashes/s, ? hashes, ? coins; schedule ?, paused"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"rng", "webui", "worker"}
    assert rows["rng"].split()[:3] == ["rng", "no", "?/?"] and rows["rng"].endswith("? \u2192 ?: ?")
    assert status_table({"rate": 1.0, "hashes": 5, "coins": 0}) == "1.0 hashes/s, 5 hashes, 0 coins"
