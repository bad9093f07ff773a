"""`brkcoin logs` without processes: reading each form of time, merging files by
time, --since, the prefixes, and content that is hostile (invalid UTF-8, a line of
megabytes, files truncated or replaced under the reader)."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brkcoin import cli, logs

UTC_1429 = datetime(2026, 12, 3, 14, 29, 42, tzinfo=UTC).timestamp()
LOCAL_1429 = datetime(2026, 12, 3, 14, 29, 42).timestamp()  # naive: the machine's zone


@pytest.mark.parametrize(("line", "expected"), [
    # gunicorn's
    ("[2026-12-03 14:29:42 +0000] [1234] [INFO] Starting gunicorn 23.0.0", UTC_1429),
    ("[2026-12-03 14:29:42 +0100] [1234] [INFO] Booting worker", UTC_1429 - 3600),
    # the platform's JSON events
    ('{"time": "2026-12-03T14:29:42+0000", "severity": "INFO", "message": "x"}', UTC_1429),
    # JSON as Cloud Logging takes it: "timestamp", a string or seconds and nanos
    ('{"timestamp": "2026-12-03T14:29:42.5Z", "severity": "INFO"}', UTC_1429 + 0.5),
    (f'{{"timestamp": {{"seconds": {UTC_1429:.0f}, "nanos": 250000000}}}}', UTC_1429 + 0.25),
    (f'{{"time": {UTC_1429:.0f}, "msg": "epoch seconds"}}', UTC_1429),
    (f'{{"time": {UTC_1429 * 1000:.0f}, "msg": "epoch ms"}}', UTC_1429),
    # the scheduler's: local time
    ('2026-12-03T14:29:42 worker 200: {"invocation": "1b19"}', LOCAL_1429),
    # Python logging's asctime, with its comma
    ("2026-12-03 14:29:42,250 INFO starting", LOCAL_1429 + 0.25),
    ("2026-12-03T14:29:42.123456789+02:00 nanoseconds", UTC_1429 - 7200 + 0.123456),
    # Redis's
    ("7334:M 03 Dec 2026 14:29:42.238 * Ready to accept connections", LOCAL_1429 + 0.238),
    ("7334:C 3 Dec 2026 14:29:42.000 # Configuration loaded", LOCAL_1429),
    (f"7334:signal-handler ({int(UTC_1429)}) Received SIGTERM scheduling shutdown...",
     UTC_1429),
])
def test_a_line_time_is_read_in_each_form(line, expected):
    assert logs.line_time(line) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("line", [
    '{"severity": "INFO", "worker": {"invocation": "1b1960f68db3", "hashes": 6}}',
    "Traceback (most recent call last):",
    '  File "/work/main/webui/main.py", line 586, in webui',
    "INFO:     Started server process [1234]",
    "ERROR:root:webui: GET /stats failed",
    '{"time": "yesterday"}',
    '{"time": true}',
    "{not json",
    "[1, 2]",
    "2026-13-45T14:29:42 no such day",
    "2026-12-03T14:29:4 cut short",
    "0001-01-01T00:00:00 before the epoch",
    '{"time": NaN}',
    '{"time": 1e308}',
    '{"timestamp": {"seconds": Infinity}}',
    "1:signal-handler (" + "9" * 400 + ") an infinite epoch",
    '{"time": "2026-12-03T14:29:42Z", "deep": ' + "[" * 50_000,
    "",
    "\ufffd\ufffd",
])
def test_a_line_without_a_time_has_none(line):
    assert logs.line_time(line) is None


def test_untimed_lines_keep_the_time_before_them_and_time_never_goes_back():
    lines = ["[2026-12-03 14:29:42 +0000] [1] [ERROR] boom", "Traceback:", "  File x",
             "[2026-12-03 14:29:40 +0000] [1] [INFO] a clock stepped back",
             "[2026-12-03 14:29:50 +0000] [1] [INFO] later"]
    times = [e.time for e in logs.stamped(lines, UTC_1429, "rng-1")]
    assert times == [UTC_1429] * 4 + [UTC_1429 + 8]


def write(path: Path, *lines: str, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def iso(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(UTC_1429 + offset))


def gunicorn(offset: float, text: str) -> str:
    return f"[{time.strftime('%Y-%m-%d %H:%M:%S +0000', time.gmtime(UTC_1429 + offset))}] {text}"


@pytest.fixture
def stack(tmp_path):
    """A data folder as `brkcoin up` leaves it: the platform's events, two rng
    instances (one with a traceback), a worker whose lines carry no time, the
    scheduler's and Redis's lines."""
    data = tmp_path / "data"
    write(data / "logs" / "platform.log",
          f'{{"time": "{iso(0)}", "severity": "INFO", "message": "rng-1 starting"}}',
          f'{{"time": "{iso(5)}", "severity": "INFO", "message": "rng-2 starting"}}',
          f'{{"time": "{iso(20)}", "severity": "INFO", "message": "the end"}}')
    write(data / "logs" / "rng-1.log", "untimed start of rng-1",
          gunicorn(1, "rng-1 booted"), gunicorn(6, "rng-1 failed"), "Traceback (most recent):",
          "  File boom", gunicorn(7, "rng-1 again"))
    write(data / "logs" / "rng-2.log", gunicorn(6, "rng-2 booted"))
    write(data / "logs" / "worker-1.log", '{"severity": "INFO", "worker": {"n": 1}}',
          '{"severity": "INFO", "worker": {"n": 2}}', mtime=UTC_1429 + 10)
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(UTC_1429 + 9))
    write(data / "logs" / "scheduler.log", f"{local} worker 200: n=1")
    write(data / "logs" / "notes.txt", "not a log")
    write(data / "logs" / "other.log", "not ours")
    return data


def brkcoin_logs(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = cli.main(["logs", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_every_file_is_merged_by_time_keeping_each_files_order(stack, capsys):
    code, lines, err = brkcoin_logs(capsys, "--data-dir", str(stack))
    assert code == 0 and err == ""
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(UTC_1429 + 9))
    assert lines == [
        f'platform  | {{"time": "{iso(0)}", "severity": "INFO", "message": "rng-1 starting"}}',
        "rng-1     | untimed start of rng-1",  # before the file's first time: that time
        f"rng-1     | {gunicorn(1, 'rng-1 booted')}",
        f'platform  | {{"time": "{iso(5)}", "severity": "INFO", "message": "rng-2 starting"}}',
        f"rng-1     | {gunicorn(6, 'rng-1 failed')}",
        "rng-1     | Traceback (most recent):",  # untimed: stays with the line before it
        "rng-1     |   File boom",
        f"rng-2     | {gunicorn(6, 'rng-2 booted')}",  # a tie: the earlier instance first
        f"rng-1     | {gunicorn(7, 'rng-1 again')}",
        f"scheduler | {local} worker 200: n=1",
        'worker-1  | {"severity": "INFO", "worker": {"n": 1}}',  # no time: the file's mtime
        'worker-1  | {"severity": "INFO", "worker": {"n": 2}}',
        f'platform  | {{"time": "{iso(20)}", "severity": "INFO", "message": "the end"}}',
    ]


def test_names_select_functions_and_the_platforms_logs(stack, capsys):
    code, lines, _ = brkcoin_logs(capsys, "rng", "scheduler", "--data-dir", str(stack))
    assert code == 0
    assert {line.split(" | ")[0].strip() for line in lines} == {"rng-1", "rng-2", "scheduler"}
    # the prefix is as wide as the widest chosen label, as compose pads it
    assert all(line[len("scheduler"):].startswith(" | ") for line in lines)
    code, lines, _ = brkcoin_logs(capsys, "worker", "--data-dir", str(stack))
    assert lines == ['worker-1 | {"severity": "INFO", "worker": {"n": 1}}',
                     'worker-1 | {"severity": "INFO", "worker": {"n": 2}}']


def test_an_unknown_name_is_an_error_that_names_the_choices(stack, capsys):
    code, lines, err = brkcoin_logs(capsys, "rng", "miner", "--data-dir", str(stack))
    assert code == 2 and lines == []
    assert err.strip() == ("brkcoin: no logs named 'miner'; choose from webui, rng, hasher, "
                           "worker, platform, scheduler")  # no redis.log here: no redis
    write(stack / "redis" / "redis.log", "1:M 03 Dec 2026 14:29:42.238 * Ready")
    code, lines, err = brkcoin_logs(capsys, "redis", "--data-dir", str(stack))
    assert code == 0 and lines == ["redis | 1:M 03 Dec 2026 14:29:42.238 * Ready"], err


def test_a_data_folder_without_logs_is_a_one_line_error(tmp_path, capsys):
    code, lines, err = brkcoin_logs(capsys, "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and lines == []
    assert len(err.strip().splitlines()) == 1
    assert "no logs in" in err and "`brkcoin up` writes them there" in err


def test_since_keeps_the_lines_at_or_after_it(stack, capsys):
    code, lines, _ = brkcoin_logs(capsys, "rng", "platform", "--since", iso(6),
                                  "--data-dir", str(stack))
    assert code == 0
    assert [line.split(" | ", 1)[1] for line in lines] == [
        gunicorn(6, "rng-1 failed"), "Traceback (most recent):", "  File boom",
        gunicorn(6, "rng-2 booted"), gunicorn(7, "rng-1 again"),
        f'{{"time": "{iso(20)}", "severity": "INFO", "message": "the end"}}']
    now = time.time()
    write(stack / "logs" / "platform.log",
          *(f'{{"time": {now - ago:.0f}, "message": "{ago} s ago"}}' for ago in (3600, 5)))
    code, lines, _ = brkcoin_logs(capsys, "platform", "--since", "10m",
                                  "--data-dir", str(stack))
    assert code == 0 and lines == [f'platform | {{"time": {now - 5:.0f}, "message": "5 s ago"}}']
    code, lines, err = brkcoin_logs(capsys, "--since", "soon", "--data-dir", str(stack))
    assert code == 2 and "--since takes a duration" in err


def test_since_reads_durations_and_iso_times():
    now = 1_000_000.0
    assert logs.parse_since("30s", now) == now - 30
    assert logs.parse_since("10m", now) == now - 600
    assert logs.parse_since("2h", now) == now - 7200
    assert logs.parse_since("1.5d", now) == now - 1.5 * 86400
    assert logs.parse_since("2026-12-03T14:29:42Z", now) == UTC_1429
    assert logs.parse_since("2026-12-03T14:29:42+00:00", now) == UTC_1429
    assert logs.parse_since("2026-12-03 14:29:42", now) == LOCAL_1429
    assert logs.parse_since("2026-12-03T14:29", now) == LOCAL_1429 - 42
    assert logs.parse_since("2026-12-03", now) == datetime(2026, 12, 3).timestamp()
    for wrong in ("10", "m", "-5m", "10 minutes", "2026-12-03T14:29:42 trailing",
                  "[2026-12-03 14:29:42 +0000]", "2026-02-30"):
        with pytest.raises(ValueError, match="--since"):
            logs.parse_since(wrong, now)


def test_the_prefix_is_padded_and_coloured_only_on_a_terminal():
    assert logs.prefix("rng-2", 10) == "rng-2      | "
    assert logs.prefix("rng-2", 10, "36") == "\033[36mrng-2      | \033[0m"

    class Terminal:
        def isatty(self) -> bool:
            return True

    assert logs.use_colour(Terminal(), {}) is True
    assert logs.use_colour(Terminal(), {"NO_COLOR": "1"}) is False
    assert logs.use_colour(Terminal(), {"NO_COLOR": ""}) is True  # no-color.org: non-empty
    assert logs.use_colour(object(), {}) is False


def test_each_label_keeps_its_own_colour(capsys):
    show = logs.Printer(["rng-1", "worker-10"], colour=True)
    show("rng-1", "a")
    show("worker-10", "b")
    show("rng-1", "c")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["\033[36mrng-1     | \033[0ma", "\033[33mworker-10 | \033[0mb",
                     "\033[36mrng-1     | \033[0mc"]


def test_invalid_utf8_is_printed_with_replacement_characters(tmp_path, capsys):
    log = tmp_path / "data" / "logs" / "hasher-1.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"ok \xff\xfe bytes \xc3\n\x00\x1b[31m red\r\nlast, no newline \xe2\x82")
    code, lines, err = brkcoin_logs(capsys, "--data-dir", str(tmp_path / "data"))
    assert code == 0 and err == ""
    assert lines == ["hasher-1 | ok \ufffd\ufffd bytes \ufffd",
                     "hasher-1 | \x00\x1b[31m red",
                     "hasher-1 | last, no newline \ufffd"]


def test_an_over_long_line_is_cut_with_a_marker_and_memory_stays_bounded(tmp_path):
    log = tmp_path / "worker-1.log"
    size = 20 * 1024 * 1024
    with open(log, "wb") as out:
        out.write(b"before\n")
        out.write(b"x" * size + b"\n")
        out.write(b"after\n")
    reader = logs.Reader(log)
    seen = []
    for text in reader.lines():
        assert len(reader.line) <= logs.CAP  # never more of a line than it prints
        seen.append(text)
    assert seen[0] == "before" and seen[2] == "after" and len(seen) == 3
    assert seen[1] == "x" * logs.CAP + f" [... {size - logs.CAP} more bytes]"


def test_a_partial_last_line_waits_for_its_newline(tmp_path):
    log = tmp_path / "rng-1.log"
    log.write_bytes(b"one\ntw")
    reader = logs.Reader(log)
    assert list(reader.lines()) == ["one"]
    assert list(reader.lines()) == []
    with open(log, "ab") as out:
        out.write(b"o\nthr")
    assert list(reader.lines()) == ["two"]
    with open(log, "ab") as out:
        out.write(b"ee\n")
    assert list(reader.lines()) == ["three"]


def test_a_truncated_or_replaced_file_is_read_again_from_its_start(tmp_path):
    log = tmp_path / "rng-1.log"
    log.write_text("one\ntwo\n")
    reader = logs.Reader(log)
    assert list(reader.lines()) == ["one", "two"]
    log.write_text("new\n")  # truncated: shorter than what was read
    assert list(reader.lines()) == ["new"]
    replacement = tmp_path / "replacement"
    replacement.write_text("other one\nother two\n")
    replacement.replace(log)  # replaced: another file under the name, even if longer
    assert list(reader.lines()) == ["other one", "other two"]
    log.unlink()
    assert list(reader.lines()) == []  # gone (pruned): nothing, no error


def test_follow_prints_new_lines_and_new_instances(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logs, "POLL", 0.02)
    data = tmp_path / "data"
    write(data / "logs" / "rng-1.log", gunicorn(0, "old"))
    write(data / "logs" / "hasher-1.log", "not chosen")
    stop = threading.Event()
    follower = threading.Thread(target=logs._show, args=(data, {"rng"}, None, True, stop.is_set))
    follower.start()
    try:
        def printed(count: int) -> list[str]:
            give_up = time.monotonic() + 5
            while len(lines := [line for line in "".join(seen).splitlines()]) < count:
                assert time.monotonic() < give_up, lines
                seen.append(capsys.readouterr().out)
                time.sleep(0.02)
            return lines

        seen: list[str] = []
        assert printed(1) == [f"rng-1 | {gunicorn(0, 'old')}"]
        with open(data / "logs" / "rng-1.log", "a") as out:
            out.write("new line\npartial")
        write(data / "logs" / "rng-12.log", "a new instance")  # scaled up
        with open(data / "logs" / "hasher-1.log", "a") as out:
            out.write("still not chosen\n")
        lines = printed(3)
        assert sorted(lines[1:]) == ["rng-1 | new line", "rng-12 | a new instance"]
        write(data / "logs" / "rng-12.log", "replaced")  # truncated: read from its start
        assert printed(4)[3] == "rng-12 | replaced"
    finally:
        stop.set()
        follower.join(5)
    assert not follower.is_alive()
    assert "partial" not in "".join(seen) + capsys.readouterr().out
