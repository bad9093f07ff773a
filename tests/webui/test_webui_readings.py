"""/history and /stats: what the worker records for the page, read back and added
up. Through Functions Framework's test client against a real redis-server, with
lines written as the worker's flush writes them, and once from a real worker."""

from __future__ import annotations

import json
import math
import uuid

import pytest

from brkcoin.platform.processes import free_port
from support import mine

BOUNDS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
OVER = math.inf  # the overflow bucket, above the last bound


@pytest.fixture
def client(function_client, redis_server):
    dead = f"http://127.0.0.1:{free_port()}"
    with function_client(
        "webui", REDIS_URL=redis_server.url, RNG_URL=dead, HASHER_URL=dead, WORKER_URL=dead
    ) as running:
        yield running


def _calls(timed: dict[float, int] | None = None, errors: int = 0) -> dict:
    """An upstream's calls as telemetry.py writes them: `timed` maps a bucket's
    upper bound (or OVER) to the successful calls in it."""
    timed = timed or {}
    buckets = [timed.get(bound, 0) for bound in [*BOUNDS, OVER]]
    # A line's own p50/p95 cannot be combined across lines: /stats must not use them.
    return {"calls": sum(buckets) + errors, "errors": errors, "buckets": buckets,
            "p50_ms": 7777.0, "p95_ms": 7777.0}


def _line(invocation: str = "inv-a", instance: str = "host:1", loops: int = 1,
          hashes: int = 0, rng: dict | None = None, hasher: dict | None = None,
          interval: object = 2.0) -> str:
    """A line as telemetry.py writes it. `interval`: the seconds it covers, since
    the invocation's previous line or start; 2 s makes a lone line's invocation
    one that ran at the moment /stats counts them (1.5 s before the newest line)."""
    return json.dumps({
        "flush": f"brkcoin:flush:{uuid.uuid4().hex}", "instance": instance,
        "invocation": invocation, "loops": loops, "batch": 1, "interval": interval,
        "hashes": hashes, "bounds_ms": BOUNDS,
        "rng": rng or _calls(), "hasher": hasher or _calls(),
    }, separators=(",", ":"))


def _redis_now(r) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def _add(r, *lines: str, age: float = 1.0) -> None:
    """Lines flushed `age` seconds ago by Redis' clock, as the worker's ZADD scores them."""
    now = _redis_now(r)
    r.zadd("brkcoin:stats", {line: now - age for line in lines})


NO_PLATFORM = {"instance_seconds": None}  # what each function's figures add without it


# ---- /history ----


def test_history_oldest_first_skipping_malformed(client, redis_server):
    r = redis_server.client()
    bad = ["junk", "[102]", "[103,true]", "[104,-1]", "[105,1.5]", '{"t":1}', "[106,NaN]",
           b"\xff", "[1e999,1]", '["107",1]', "[107,1,2]", "[" * 10_000]
    # LPUSH puts each at the head: the list reads newest first, as the worker keeps it.
    r.lpush("hashes:history", "[100,5]", "[101,9]", *bad, "[108,12]")
    before = _redis_now(r)
    response = client.get("/history")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = response.json()
    assert body["points"] == [[100, 5], [101, 9], [108, 12]]
    assert before <= body["now"] < before + 2


def test_history_is_the_newest_600(client, redis_server):
    r = redis_server.client()
    r.lpush("hashes:history", *(f"[{t},{t * 10}]" for t in range(1, 701)))
    points = client.get("/history").json()["points"]
    assert len(points) == 600
    assert points[0] == [101, 1010] and points[-1] == [700, 7000]


def test_history_empty(client):
    assert client.get("/history").json()["points"] == []


# ---- /stats ----


def test_stats_empty(client):
    body = client.get("/stats").json()
    assert body["window"] == 5 and isinstance(body["now"], float)
    assert body["functions"] == {
        "rng": {"calls_per_s": 0, "errors_per_s": 0, "p50_ms": None, "p95_ms": None,
                **NO_PLATFORM},
        "hasher": {"calls_per_s": 0, "errors_per_s": 0, "p50_ms": None, "p95_ms": None,
                   **NO_PLATFORM},
        "worker": {"instances": 0, "invocations": 0, "loops": 0, "hashes_per_s": 0,
                   **NO_PLATFORM},
    }
    assert body["platform"] is None and body["skipped"] == 0


def test_stats_add_up_every_invocation(client, redis_server):
    r = redis_server.client()
    # invocation a (2 loops) flushed twice; b (3 loops) on the same instance; c elsewhere
    _add(r, _line("a", "host:1", 2, hashes=10, rng=_calls({1: 10}, errors=1),
                  hasher=_calls({2: 10}), interval=1.0), age=2.0)
    _add(
        r,
        _line("a", "host:1", 2, hashes=4, rng=_calls({1: 4}), hasher=_calls({2: 4}),
              interval=1.0),
        _line("b", "host:1", 3, hashes=6, rng=_calls({500: 6}), hasher=_calls({5: 6})),
        _line("c", "host:2", 1, hashes=5, rng=_calls({500: 4, OVER: 1}, errors=4),
              hasher=_calls({5: 5})),
    )
    body = client.get("/stats").json()
    rng, hasher, worker = (body["functions"][n] for n in ("rng", "hasher", "worker"))
    # 25 rng calls timed (14 at <= 1 ms, 10 at <= 500 ms, 1 slower) + 5 errors, over 5 s.
    assert rng["calls_per_s"] == 30 / 5 and rng["errors_per_s"] == 5 / 5
    # From the summed buckets: the 13th of 25 calls is <= 1 ms, the 24th <= 500 ms.
    # (The lines' p50s are 1, 1, 500 and 500: no mean, median or max of them gives this.)
    assert rng["p50_ms"] == 1.0 and rng["p95_ms"] == 500.0
    assert hasher == {"calls_per_s": 5.0, "errors_per_s": 0.0, "p50_ms": 2.0, "p95_ms": 5.0,
                      **NO_PLATFORM}
    assert worker == {"instances": 2, "invocations": 3, "loops": 2 + 3 + 1,
                      "hashes_per_s": 25 / 5, **NO_PLATFORM}
    assert body["skipped"] == 0


def test_stats_slow_calls_report_the_last_bound(client, redis_server):
    r = redis_server.client()
    _add(r, _line(rng=_calls({OVER: 3}), hasher=_calls(errors=2)))
    functions = client.get("/stats").json()["functions"]
    assert functions["rng"]["p50_ms"] == functions["rng"]["p95_ms"] == 10000.0
    # Only failed calls: no latency to report, but the errors count.
    assert functions["hasher"] == {"calls_per_s": 0.4, "errors_per_s": 0.4,
                                   "p50_ms": None, "p95_ms": None, **NO_PLATFORM}


def test_stats_window_by_redis_clock(client, redis_server):
    r = redis_server.client()
    _add(r, _line("in", hashes=5, rng=_calls({200: 5})), age=4.0)  # 1 s inside
    _add(r, _line("old", hashes=100, rng=_calls({OVER: 100})), age=5.2)  # just out
    _add(r, _line("older", hashes=100, rng=_calls({OVER: 100})), age=30)
    worker = client.get("/stats").json()["functions"]["worker"]
    assert worker["invocations"] == 1 and worker["hashes_per_s"] == 1.0


def test_stats_skip_malformed_lines(client, redis_server):
    r = redis_server.client()
    compact = _line("good", hashes=5, rng=_calls({10: 5}))
    good = json.loads(compact)

    def variant(**changes: object) -> str:
        return json.dumps({**good, "flush": uuid.uuid4().hex, **changes})

    short = _calls({10: 5})
    short["buckets"] = short["buckets"][:-1]
    bad = [
        "not json", "[1, 2]", '"text"', b"\xff\xfe", "{" * 10_000,
        variant(hashes=-1), variant(hashes=True), variant(hashes="5"), variant(hashes=1.5),
        variant(hashes=10**30), variant(loops=None), variant(instance=""), variant(invocation=7),
        variant(rng=None), variant(rng=[]), variant(hasher=short),
        variant(rng={**short, "buckets": [*short["buckets"], 0, 0]}),
        variant(rng={**good["rng"], "calls": -3}), variant(rng={**good["rng"], "errors": 0.5}),
        variant(bounds_ms=BOUNDS[:-1]), variant(bounds_ms=[]), variant(bounds_ms="1,2"),
        variant(bounds_ms=[*BOUNDS[:-1], 1]), variant(bounds_ms=[*BOUNDS[:-1], 10**400]),
        variant(bounds_ms=[*BOUNDS[:-1], "x"]),
        compact.replace('"hashes":5', '"hashes":NaN'),
        compact.replace('"hashes":5', '"hashes":1e999'),
        compact.replace('"bounds_ms":[1,', '"bounds_ms":[Infinity,'),
    ]
    assert all(line != compact for line in bad[-3:])
    _add(r, compact, *bad)
    response = client.get("/stats")
    assert response.status_code == 200
    body = response.json()
    assert body["skipped"] == len(bad)
    assert body["functions"]["worker"] == {"instances": 1, "invocations": 1, "loops": 1,
                                           "hashes_per_s": 1.0, **NO_PLATFORM}
    assert body["functions"]["rng"]["p50_ms"] == 10.0


# ---- the worker's invocations: those running, not every one the window saw ----


def _flushes(r, names: list[str], ages: list[float], loops: int = 2, hashes: int = 10) -> None:
    """Invocations `names` flushing together `ages` seconds ago (oldest first),
    a second apart: the first line covers the second since they began."""
    for age in ages:
        _add(r, *(_line(name, loops=loops, hashes=hashes, interval=1.0) for name in names),
             age=age)


def test_two_ticks_of_invocations_are_not_added_up(client, redis_server):
    """A tick of 3 invocations of 2 loops ended 3.5 s ago, as the next tick's 3
    began: the 5 s window holds both ticks' lines. Counted as the invocations in
    the window (as before), the card said 6 workers and 12 loops for the first
    5 s of every tick; running are 3, with 6 loops."""
    r = redis_server.client()
    ended, running = ["t1-a", "t1-b", "t1-c"], ["t2-a", "t2-b", "t2-c"]
    _flushes(r, ended, [4.5, 3.5])
    _flushes(r, running, [2.5, 1.5, 0.5])
    body = client.get("/stats").json()
    seen = {json.loads(line)["invocation"] for line in r.zrangebyscore(
        "brkcoin:stats", body["now"] - body["window"], "+inf")}
    assert len(seen) == 6, "both ticks in the window: the count before said 6"
    worker = body["functions"]["worker"]
    assert (worker["invocations"], worker["loops"]) == (3, 6)
    assert worker["hashes_per_s"] == 15 * 10 / 5, "every line's hashes still count"


def test_running_invocations_between_their_flushes(client, redis_server):
    r = redis_server.client()
    _flushes(r, ["steady"], [4.8, 3.8, 2.8, 1.8, 0.8])
    _flushes(r, ["offbeat"], [4.3, 3.3, 2.3, 1.3])  # its next line is due: still running
    _flushes(r, ["ended"], [4.5, 3.5, 2.6])  # nothing for 1.8 s before the newest line
    _flushes(r, ["young"], [0.2])  # began 1.2 s ago: not counted yet
    worker = client.get("/stats").json()["functions"]["worker"]
    assert (worker["invocations"], worker["loops"]) == (2, 4)


@pytest.mark.parametrize("interval", ["1", -1, True, None, 10**30, 1e400, 86_400, [1]])
def test_a_line_of_no_interval_begins_its_invocation(client, redis_server, interval):
    """A line whose `interval` is no number of seconds still counts (hashes,
    calls), its invocation taken to begin at it; 1e400, an infinite interval,
    would have made it run since ever."""
    r = redis_server.client()
    line = json.loads(_line("odd", hashes=5))
    line["interval"] = interval  # json.dumps writes 1e400 as Infinity, which is refused
    _add(r, json.dumps(line).replace("Infinity", "1e400"))
    body = client.get("/stats").json()
    assert body["skipped"] == 0
    assert body["functions"]["worker"] == {"instances": 1, "invocations": 0, "loops": 0,
                                           "hashes_per_s": 1.0, **NO_PLATFORM}


def test_the_schedulers_count_is_the_invocations(client, redis_server):
    """With the local platform, its scheduler knows the invocations in flight."""
    r = redis_server.client()
    _flushes(r, ["a", "b"], [2.5, 1.5, 0.5])
    r.set("brkcoin:platform", json.dumps({"scheduler": {"in_flight": 5, "fanout": 5}}))
    worker = client.get("/stats").json()["functions"]["worker"]
    assert (worker["invocations"], worker["loops"]) == (5, 4)
    r.set("brkcoin:stats", "x")  # no telemetry: the scheduler's count still stands
    worker = client.get("/stats").json()["functions"]["worker"]
    assert worker == {"instances": None, "invocations": 5, "loops": None,
                      "hashes_per_s": None, **NO_PLATFORM}


@pytest.mark.parametrize("scheduler", [
    {"in_flight": "5"}, {"in_flight": -5}, {"in_flight": True}, {"in_flight": 2.5},
    {"in_flight": None}, {"in_flight": 1e400}, {}, [5], "5", None,
])
def test_a_scheduler_count_that_is_none_leaves_the_telemetrys(client, redis_server,
                                                               scheduler):
    r = redis_server.client()
    _flushes(r, ["a", "b"], [2.5, 1.5, 0.5])
    r.set("brkcoin:platform", json.dumps({"scheduler": scheduler}).replace("Infinity", "1e400"))
    body = client.get("/stats").json()
    assert body["functions"]["worker"]["invocations"] == 2
    assert "unreadable" not in body


# ---- the local platform's report ----

PLATFORM = {
    "functions": {
        "rng": {"instances": 4, "wanted": 4, "concurrency": 1, "in_flight": 1, "queued": 9,
                "restarts": 0, "replaced": 0, "autoscaled": True, "kind": "kpa", "panic": True,
                "decision": {"at": 1_800_000_000.5, "from": 1, "to": 4,
                             "reason": "panic, concurrency 9.8 over 6 s, target 0.7/instance"},
                "cold_starts": 4, "cold_start_seconds": 1.37, "cold_start_at": 1_800_000_001.0,
                "cold_requests": 2, "cold_wait_seconds": 0.8, "instance_seconds": 812.4,
                "throttled": 3, "history": [[1_799_999_990.0, 1], [1_799_999_995.0, 4]]},
        "hasher": {"instances": 2, "concurrency": 0, "in_flight": 3, "queued": 0,
                   "autoscaled": False, "kind": "cpu", "panic": False, "decision": None,
                   "cold_starts": 0, "cold_start_seconds": None, "cold_start_at": None,
                   "cold_requests": 0, "cold_wait_seconds": None, "instance_seconds": 30,
                   "throttled": 0, "history": []},
    },
    "scheduler": {"fanout": 10, "schedule": "every 10s", "skipped": 0, "in_flight": 0,
                  "paused": False},
}


def test_stats_pass_the_platform_report_through(client, redis_server):
    redis_server.client().set("brkcoin:platform", json.dumps(PLATFORM), ex=5)
    body = client.get("/stats").json()
    assert body["platform"] == PLATFORM
    functions = body["functions"]
    assert functions["rng"]["instance_seconds"] == 812.4
    assert functions["hasher"]["instance_seconds"] == 30.0
    assert functions["worker"]["instance_seconds"] is None, "not in the report"
    assert functions["worker"]["invocations"] == 0, "the scheduler's in_flight"


@pytest.mark.parametrize("value", ["812", True, -1, None, 1e400, 10**30, [812], {"s": 1}])
def test_instance_seconds_that_are_no_number_read_as_unknown(client, redis_server, value):
    report = {"functions": {"rng": {"instance_seconds": value}, "hasher": "x", "worker": []}}
    redis_server.client().set("brkcoin:platform",
                              json.dumps(report).replace("Infinity", "1e400"))
    response = client.get("/stats")
    assert response.status_code == 200
    body = response.json()
    assert [body["functions"][name]["instance_seconds"] for name in
            ("rng", "hasher", "worker")] == [None, None, None]
    assert "unreadable" not in body


@pytest.mark.parametrize("report", ['{"functions": 5}', '{"functions": []}', "{}",
                                    '{"scheduler": 5, "functions": {"rng": 5}}'])
def test_a_report_without_figures_gives_none(client, redis_server, report):
    redis_server.client().set("brkcoin:platform", report)
    _add(redis_server.client(), _line(hashes=5))
    response = client.get("/stats")
    assert response.status_code == 200
    functions = response.json()["functions"]
    assert all(functions[name]["instance_seconds"] is None for name in functions)
    assert functions["worker"]["invocations"] == 1


@pytest.mark.parametrize(
    "raw, holds",
    [
        ("{", "text that is not JSON"),
        ("[1]", "JSON that is not an object"),
        ("x" * 70_000, "over 65536 bytes, too many"),
    ],
)
def test_malformed_platform_report_reads_as_unknown(client, redis_server, raw, holds):
    r = redis_server.client()
    r.set("brkcoin:platform", raw)
    _add(r, _line(hashes=5))
    response = client.get("/stats")
    assert response.status_code == 200
    body = response.json()
    assert body["platform"] is None
    assert body["unreadable"]["brkcoin:platform"].startswith(f"holds {holds}")
    assert body["functions"]["worker"]["hashes_per_s"] == 1.0  # the rest still reads


def test_platform_numbers_no_page_can_show_read_as_unknown(client, redis_server):
    """1e400 made /stats answer 500: Python reads it as infinity, which is no JSON."""
    huge, beyond_int = "1" * 400, "9" * 5000  # int() refuses over 4300 digits
    report = ('{"functions": {"rng": {"instances": 1e400, "concurrency": -1e400, '
              '"queued": NaN, "in_flight": Infinity, "restarts": -Infinity}, '
              f'"hasher": {{"instances": {huge}, "concurrency": {beyond_int}, "queued": 3, '
              '"in_flight": 1e-400}}, '
              '"scheduler": {"schedule": "every 10s", "fanout": 2.5, "skipped": -1}}')
    redis_server.client().set("brkcoin:platform", report)
    response = client.get("/stats")
    assert response.status_code == 200
    assert response.json()["platform"] == {
        "functions": {"rng": dict.fromkeys(["instances", "concurrency", "queued", "in_flight",
                                            "restarts"]),
                      "hasher": {"instances": None, "concurrency": None, "queued": 3,
                                 "in_flight": 0.0}},
        # In range: passed on as they are; the page shows what is not a count as unknown.
        "scheduler": {"schedule": "every 10s", "fanout": 2.5, "skipped": -1},
    }
    assert "unreadable" not in response.json()


@pytest.mark.parametrize(
    "key, write, path, field, kind, expected",
    [
        ("hashes:history", lambda r: r.set("hashes:history", "x"), "/history", "points",
         "string", "list"),
        ("brkcoin:stats", lambda r: r.rpush("brkcoin:stats", "x"), "/stats", "skipped", "list",
         "zset"),
        ("brkcoin:platform", lambda r: r.hset("brkcoin:platform", "a", "b"), "/stats",
         "platform", "hash", "string"),
    ],
)
def test_key_of_the_wrong_type_reads_as_unknown(client, redis_server, key, write, path, field,
                                                kind, expected):
    write(redis_server.client())
    response = client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body[field] is None
    assert body["unreadable"] == {key: f"holds a {kind}, not a {expected}"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_unreadable_telemetry_is_every_figure_unknown(client, redis_server):
    redis_server.client().set("brkcoin:stats", "x")
    functions = client.get("/stats").json()["functions"]
    assert functions == {
        "rng": dict.fromkeys(["calls_per_s", "errors_per_s", "p50_ms", "p95_ms",
                              "instance_seconds"]),
        "hasher": dict.fromkeys(["calls_per_s", "errors_per_s", "p50_ms", "p95_ms",
                                 "instance_seconds"]),
        "worker": dict.fromkeys(["instances", "invocations", "loops", "hashes_per_s",
                                 "instance_seconds"]),
    }, "not zero: nothing says no call was made"


@pytest.mark.parametrize("path", ["/history", "/stats"])
def test_redis_down_is_503_json(function_client, path):
    client = function_client("webui", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = client.get(path)
    assert response.status_code == 503
    assert response.json()["error"].startswith("Redis unreachable at 127.0.0.1:")


@pytest.mark.slow
def test_what_a_real_worker_records(mining_stack, client, redis_server):
    """The worker's own lines, read back: every call and hash it made, once."""
    result = mine(mining_stack["worker"].url, seconds=2, concurrency=3)
    stats = client.get("/stats").json()["functions"]  # within 5 s of its first flush
    points = client.get("/history").json()["points"]
    hashes = result["hashes"]
    assert hashes > 0 and not any(result["errors"].values())
    assert stats["worker"] == {"instances": 1, "invocations": 1, "loops": 3,
                               "hashes_per_s": hashes / 5, **NO_PLATFORM}
    for name in ("rng", "hasher"):  # one call of each per hash (batch=1), none failed
        assert stats[name]["calls_per_s"] == hashes / 5 and stats[name]["errors_per_s"] == 0
        assert stats[name]["p50_ms"] <= stats[name]["p95_ms"]
    assert points[-1][1] == int(redis_server.client().get("hashes")) == hashes
    assert [t for t, _ in points] == sorted({t for t, _ in points}), "one point a second"
    assert [h for _, h in points] == sorted(h for _, h in points)
