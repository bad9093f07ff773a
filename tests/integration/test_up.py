"""`brkcoin up` as a user runs it: it mines, answers `status` and `mine`, stops
every process it started on Ctrl-C, SIGTERM or a closed terminal, and cleans up
after a crashed run."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import psutil
import pytest
import redis
import requests

from brkcoin.platform.processes import free_port
from brkcoin.platform.redis_server import RedisServer
from conftest import BRKCOIN, assert_all_gone
from support import assert_wallet_holds_only_true_coins


def test_up_mines_answers_status_and_mine(up):
    stack = up()
    stack.wait_for("brkcoin is up")
    client = stack.redis()
    give_up = time.monotonic() + 30
    while int(client.get("hashes") or 0) < 20:
        assert time.monotonic() < give_up, stack.output
        time.sleep(0.5)
    assert_wallet_holds_only_true_coins(client)

    password = stack.redis_password()
    status = subprocess.run(
        [BRKCOIN, "status", "--redis-url",
         f"redis://:{password}@127.0.0.1:{stack.ports['redis']}/0", "--sample", "1.5",
         "--json"],
        capture_output=True, text=True, timeout=30,
    )
    report = json.loads(status.stdout)
    assert report["hashes"] >= 20 and report["rate"] > 0
    # The embedded Redis refuses a client without the password...
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.ports["redis"], socket_timeout=2).hset("wallet", "0" * 64, "x")
    # ... and neither the status nor the output shows it.
    assert password and password not in stack.output
    assert password not in (stack.data_dir / "status.json").read_text()
    assert stack.data_dir.stat().st_mode & 0o077 == 0  # stack.json holds the URL

    mined = subprocess.run(
        [BRKCOIN, "mine", "--url", f"http://127.0.0.1:{stack.ports['worker']}", "--seconds", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert mined.returncode == 0, mined.stderr
    assert json.loads(mined.stdout)["hashes"] > 0

    log = (stack.data_dir / "logs" / "scheduler.log").read_text()
    assert "worker 200:" in log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stopping_up_leaves_no_process_behind(up, sig):
    stack = up()
    stack.wait_for("brkcoin is up")
    children = stack.descendants()
    assert len(children) >= 4  # redis + a functions-framework master (and worker) each
    stack.process.send_signal(sig)
    assert stack.process.wait(30) == 0
    stack.wait_for("stopped every process it started")
    assert_all_gone(children)
    assert not (stack.data_dir / "stack.json").exists()


def test_a_killed_up_takes_its_children_with_it(up):
    stack = up()
    stack.wait_for("brkcoin is up")
    children = stack.descendants()
    stack.process.kill()  # no cleanup code runs: PDEATHSIG does the work
    assert_all_gone(children)


def test_next_up_stops_the_leftovers_of_a_crashed_run(up, tmp_path):
    # A leftover as a crashed run on a platform without PDEATHSIG would leave it:
    # recorded in stack.json by an owner that is gone, still running.
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    (data_dir / "stack.json").write_text(json.dumps({
        "owner": dead_owner.pid,
        "processes": [{"name": "rng", "pid": orphan.pid, "cmdline": ["sleep", "300"],
                       "started": psutil.Process(orphan.pid).create_time()}],
    }))
    stack = up()
    stack.wait_for("brkcoin is up")
    assert f"ended a leftover rng (pid {orphan.pid})" in stack.output
    assert orphan.wait(10) is not None


def test_a_taken_port_gives_a_clear_message(up):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = up(f"--hasher-port={port}")
        assert stack.process.wait(30) == 1
    assert f"port 127.0.0.1:{port} for hasher is already in use" in stack.output
    assert "Traceback" not in stack.output


def test_a_bad_schedule_gives_a_clear_message(tmp_path):
    result = subprocess.run([BRKCOIN, "up", "--data-dir", str(tmp_path), "--schedule", "* *"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "bad cron expression" in result.stderr
    assert "Traceback" not in result.stderr


def test_stopping_up_mid_invocation_is_quick_and_loses_nothing(up):
    stack = up("--every", "20s")  # each invocation mines about 18 s
    stack.wait_for("brkcoin is up")
    client = stack.redis()
    give_up = time.monotonic() + 30
    while int(client.get("hashes") or 0) < 20:
        assert time.monotonic() < give_up, stack.output
        time.sleep(0.2)
    stopping = time.monotonic()
    stack.process.send_signal(signal.SIGTERM)  # mid-invocation
    assert stack.process.wait(30) == 0
    assert time.monotonic() - stopping < 3
    # The wallet as the next run will find it (the AOF), against what was reported.
    log = (stack.data_dir / "logs" / "scheduler.log").read_text()
    summaries = [json.loads(line.split("worker 200: ", 1)[1])
                 for line in log.splitlines() if "worker 200: " in line]
    assert summaries and "SIGTERM" in summaries[-1]["stopped"]
    reopened = RedisServer(stack.data_dir / "redis", free_port()).start()
    try:
        assert int(reopened.client().get("hashes")) == sum(s["hashes"] for s in summaries)
    finally:
        reopened.stop()


def test_dockercoins_own_worker_and_webui_can_use_the_wallet_by_explicit_choice(up):
    """The original worker and web UI connect to Redis with no password: with
    --redis-no-password (and a warning) they work against our functions and wallet."""
    stack = up("--redis-no-password", "--schedule", "0 0 1 1 *")
    stack.wait_for("brkcoin is up")
    assert "warning: redis has no password" in stack.output
    original = redis.Redis(port=stack.ports["redis"], socket_timeout=2)  # as theirs do
    rng, hasher = (f"http://127.0.0.1:{stack.ports[n]}" for n in ("rng", "hasher"))
    coins = 0
    for _ in range(48):  # the original worker's loop, call for call
        random_bytes = requests.get(f"{rng}/32", timeout=5).content
        hex_hash = requests.post(f"{hasher}/", data=random_bytes, timeout=5).text
        if hex_hash.startswith("0"):
            original.hset("wallet", hex_hash, random_bytes)
            coins += 1
    original.incrby("hashes", 48)
    assert int(original.get("hashes")) == 48 and original.hlen("wallet") == coins  # their UI
    ours = requests.get(f"http://127.0.0.1:{stack.ports['webui']}/json", timeout=5).json()
    assert (ours["hashes"], ours["coins"]) == (48, coins)
    stack.wait_until(lambda s: s.get("redis", {}).get("password") is False)
