"""The platform's metrics as Prometheus reads them: the exposition of a platform's
recorded state, parsed back with prometheus-client's own parser. No process."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from brkcoin.platform.door import Instance
from brkcoin.platform.supervisor import Platform


def _samples(platform: Platform) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = platform.metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_what_the_door_and_the_supervisor_recorded_is_exposed(tmp_path: Path) -> None:
    platform = Platform(tmp_path, redis_url="redis://127.0.0.1:1/0")
    rng = platform.services["rng"]
    door = rng.door.rules
    door.add(Instance("rng-1", "127.0.0.1", 9001), 0.0)
    for took in (0.0004, 0.11, 0.11):  # answered: 1 sub-millisecond, 2 of the demo's 0.1 s
        ticket = door.arrive(10.0)
        door.finish(ticket, 10.0 + took)
        door.count(200)
    door.count(504)
    door.count(429)
    door.throttled += 1
    door.arrive(20.0)  # one still on its instance
    rng.started_count, rng.init_sum = 2, 0.9
    rng.init_durations[13] = 2  # two starts of 0.25 to 0.5 s
    rng.restarts, rng.panic = 1, True

    got = _samples(platform)
    fn = (("faas_name", "rng"),)
    assert got[("faas_invoke_duration_seconds_count", fn)] == 3
    assert got[("faas_invoke_duration_seconds_bucket", (*fn, ("le", "0.0005")))] == 1
    assert got[("faas_invoke_duration_seconds_bucket", (*fn, ("le", "0.1")))] == 1
    assert got[("faas_invoke_duration_seconds_bucket", (*fn, ("le", "0.125")))] == 3
    assert abs(got[("faas_invoke_duration_seconds_sum", fn)] - 0.2204) < 1e-9
    assert got[("faas_init_duration_seconds_bucket", (*fn, ("le", "0.25")))] == 0
    assert got[("faas_init_duration_seconds_bucket", (*fn, ("le", "0.5")))] == 2
    assert got[("faas_invocations_total", fn)] == 3
    assert got[("faas_errors_total", fn)] == 1 and got[("faas_timeouts_total", fn)] == 1
    assert got[("brkcoin_requests_total", (("code", "429"), *fn))] == 1
    assert got[("brkcoin_throttled_requests_total", fn)] == 1
    assert got[("faas_coldstarts_total", fn)] == 2 and got[("brkcoin_restarts_total", fn)] == 1
    assert got[("brkcoin_requests_in_flight", fn)] == 1
    assert got[("brkcoin_autoscaler_panic", fn)] == 1 and got[("brkcoin_autoscaled", fn)] == 1
    assert got[("brkcoin_instances_desired", fn)] == 1
    # Every function has its series, whether it served anything or not.
    assert got[("faas_invocations_total", (("faas_name", "hasher"),))] == 0
    assert got[("brkcoin_redis_restarts_total", ())] == 0
