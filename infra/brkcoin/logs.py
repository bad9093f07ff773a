"""`brkcoin logs [NAME...] [-f] [--since T]`: what `docker compose logs` shows, from
the files `brkcoin up` writes: every instance's lines merged by time, each after a
prefix naming its instance (`rng-2      | ...`).

The files: `<data-dir>/logs/<function>-<n>.log` (an instance's stdout and stderr),
`logs/platform.log` (JSON events), `logs/scheduler.log` and `redis/redis.log`.

A line's time is read where it has one: an ISO time at its start (the scheduler's,
local; Python logging's asctime), gunicorn's `[2026-12-03 14:29:42 +0000]`, Redis's
`pid:R 03 Dec 2026 14:29:42.237` and `pid:signal-handler (epoch)`, or a JSON line's
"time" or "timestamp" (the platform's). A line without one (a traceback's, the
worker's summaries) keeps the time of the line before it; the lines before a file's
first time take that time, and a file with no time at all takes its mtime (when it
was last written: the latest its lines can be; so `--since` keeps or drops such a
file whole). Times never go back within a file, so a file's order is kept, and the
merge is stable.
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from brkcoin.layout import FUNCTIONS

CAP = 64 * 1024  # bytes of a line printed; the rest is counted, not kept
CHUNK = 64 * 1024  # bytes read at once: memory stays bounded whatever the file holds
POLL = 0.25  # seconds between looks for growth with -f
OTHERS = ("platform", "redis", "scheduler")  # the logs besides the functions'
# docker compose's colours, in its order: cyan, yellow, green, magenta, blue, then bright
COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")

_INSTANCE = re.compile(rf"({'|'.join(map(re.escape, FUNCTIONS))})(?:-(\d+))?")
_ISO = re.compile(r"\[?(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d{1,9}))?)?"
                  r" ?(Z|[+-]\d\d:?\d\d)?(?![\d:])")
_REDIS = re.compile(r"\d+:[A-Z] (\d\d?) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d)(?:\.(\d+))? ")
_REDIS_SIGNAL = re.compile(r"\d+:signal-handler \((\d+)\) ")  # Redis's: epoch seconds
_MONTHS = {m: i for i, m in enumerate(("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec")
                                      .split(), 1)}
_FIRST = frozenset("{[0123456789")  # how every timed line starts
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Entry(NamedTuple):
    time: float
    label: str
    text: str


@dataclass(frozen=True)
class Source:
    name: str  # what NAME selects: a function, platform, scheduler or redis
    label: str  # the prefix: the instance (rng-2) or the name
    path: Path


# -- pure: times, merging, prefixes --

def _epoch(year: int, month: int, day: int, hms: Sequence[str | None], fraction: str | None,
           zone: str | None) -> float | None:
    tz: timezone | None = None
    if zone == "Z":
        tz = UTC
    elif zone:
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        hour, minute, second = (int(part or 0) for part in hms)
        moment = datetime(year, month, day, hour, minute, second,
                          int((fraction or "0")[:6].ljust(6, "0")), tzinfo=tz)
        return moment.timestamp()  # naive: local time, as the scheduler and Redis write
    except (ValueError, OverflowError, OSError):
        return None


def parse_iso(text: str, whole: bool = False) -> float | None:
    """An ISO 8601 time (with a T or a space, an optional fraction and zone; none:
    local time) at the start of `text` (`whole`: all of it), or gunicorn's in brackets."""
    m = _ISO.match(text)
    if m is None or (whole and (m.end() != len(text) or text.startswith("["))):
        return None
    y, mo, d, hh, mm, ss, fraction, zone = m.groups()
    return _epoch(int(y), int(mo), int(d), (hh, mm, ss), fraction, zone)


def _json_time(value: Any) -> float | None:
    if isinstance(value, str):
        return parse_iso(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)  # epoch seconds, or ms
    if isinstance(value, dict) and isinstance(value.get("seconds"), int | float):
        return float(value["seconds"]) + float(value.get("nanos") or 0) / 1e9  # Cloud Logging
    return None


def line_time(text: str) -> float | None:
    """The time a log line says it was written, as epoch seconds, or None."""
    if text[:1] not in _FIRST:
        return None  # most untimed lines (tracebacks, plain prints), cheaply
    found = _time_in(text)
    # A hostile time (NaN, 1e308) would carry every later line of its file with it.
    return found if found is not None and 0 <= found < 1e11 else None


def _time_in(text: str) -> float | None:
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return None
        if isinstance(record, dict):
            for key in ("time", "timestamp"):
                if (found := _json_time(record.get(key))) is not None:
                    return found
        return None
    if (m := _REDIS.match(text)) and m.group(2) in _MONTHS:
        d, month, y, hh, mm, ss, fraction = m.groups()
        return _epoch(int(y), _MONTHS[month], int(d), (hh, mm, ss), fraction, None)
    if m := _REDIS_SIGNAL.match(text):
        return float(m.group(1))
    return parse_iso(text)


def stamped(lines: Iterable[str], anchor: float, label: str) -> Iterator[Entry]:
    """Each line with its time: its own, else the one before it's; `anchor` before
    the first. Never earlier than the line before, so merging keeps the file's order."""
    last = anchor
    for text in lines:
        found = line_time(text)
        if found is not None and found > last:
            last = found
        yield Entry(last, label, text)


def merge(streams: Iterable[Iterable[Entry]]) -> Iterator[Entry]:
    """Entries of every stream by time; on a tie, the earlier stream's first."""
    return heapq.merge(*streams, key=lambda e: e.time)


def parse_since(text: str, now: float) -> float:
    """--since: a duration back from now (30s, 10m, 2h, 1d) or an ISO time (a date
    alone: its midnight, local)."""
    if m := _RELATIVE.fullmatch(text.strip()):
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    text = text.strip()
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        text += "T00:00:00"
    found = parse_iso(text, whole=True)
    if found is None:
        raise ValueError(f"--since takes a duration (30s, 10m, 2h, 1d) or an ISO time "
                         f"(2026-12-03T14:30:00), not {text!r}")
    return found


def choose(names: Sequence[str], present: Iterable[str]) -> set[str]:
    """The names asked for (none: all there are); an unknown one is a ValueError
    that names the choices."""
    choices = [*FUNCTIONS, *(n for n in OTHERS if n in set(present))]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(f"no logs named {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(choices)}")
    return set(names or choices)


def prefix(label: str, width: int, colour: str | None = None) -> str:
    text = f"{label:<{width}} | "
    return f"\033[{colour}m{text}\033[0m" if colour else text


def use_colour(stream: Any, environ: Mapping[str, str]) -> bool:
    """As compose: colour on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    return not environ.get("NO_COLOR") and bool(getattr(stream, "isatty", lambda: False)())


# -- I/O: finding and reading the files --

def discover(data_dir: Path) -> list[Source]:
    """Every log `brkcoin up` has written under `data_dir`: the platform's, Redis's,
    each function's instances (in order) and the scheduler's."""
    found: list[tuple[tuple[int, int], Source]] = []
    order = {name: i for i, name in enumerate(("platform", "redis", *FUNCTIONS, "scheduler"))}
    try:
        names = os.listdir(data_dir / "logs")
    except OSError:
        names = []
    for file in names:
        stem = file.removesuffix(".log")
        if stem == file:
            continue
        if stem in ("platform", "scheduler"):
            found.append(((order[stem], 0), Source(stem, stem, data_dir / "logs" / file)))
        elif m := _INSTANCE.fullmatch(stem):
            found.append(((order[m.group(1)], int(m.group(2) or 0)),
                          Source(m.group(1), stem, data_dir / "logs" / file)))
    if (data_dir / "redis" / "redis.log").is_file():
        found.append(((order["redis"], 0),
                      Source("redis", "redis", data_dir / "redis" / "redis.log")))
    return [source for _, source in sorted(found, key=lambda pair: pair[0])]


class Reader:
    """One file read on from where the last call left it: complete lines only (the
    last, with `final`, even without its newline), each cut at CAP bytes. A file
    truncated or replaced is read again from its start."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.identity: tuple[int, int] | None = None
        self.line, self.cut = bytearray(), 0  # the line so far, and its bytes over CAP
        self.failed = False

    def lines(self, final: bool = False, stop: Callable[[], bool] = lambda: False
              ) -> Iterator[str]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return  # pruned with its instance, or not written yet
        except OSError as e:
            if not self.failed:
                print(f"brkcoin: cannot read {self.path}: {e.strerror}", file=sys.stderr)
            self.failed = True
            return
        with f:
            status = os.fstat(f.fileno())
            identity = (status.st_dev, status.st_ino)
            if identity != self.identity or status.st_size < self.offset:
                self.identity, self.offset, self.line, self.cut = identity, 0, bytearray(), 0
            f.seek(self.offset)
            while not stop() and (chunk := f.read(CHUNK)):
                self.offset += len(chunk)
                *complete, rest = chunk.split(b"\n")
                for piece in complete:
                    if self.line or self.cut or len(piece) > CAP:
                        self._add(piece)
                        yield self._take()
                    else:  # the usual case: a whole line in this chunk, under CAP
                        yield piece.decode("utf-8", "replace").removesuffix("\r")
                self._add(rest)
            if final and (self.line or self.cut):
                yield self._take()

    def _add(self, piece: bytes) -> None:
        room = max(0, CAP - len(self.line))
        self.line += piece[:room]
        self.cut += max(0, len(piece) - room)

    def _take(self) -> str:
        text = self.line.decode("utf-8", "replace").removesuffix("\r")
        if self.cut:
            text += f" [... {self.cut} more bytes]"
        self.line, self.cut = bytearray(), 0
        return text


def anchor_of(path: Path, stop: Callable[[], bool] = lambda: False) -> float:
    """The time of the file's first timed line, else the file's mtime."""
    for text in Reader(path).lines(final=True, stop=stop):
        if (found := line_time(text)) is not None:
            return found
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


# -- the command --

class Printer:
    """Prefixed lines on stdout, a colour per instance when on a terminal."""

    def __init__(self, labels: Iterable[str], colour: bool) -> None:
        self.width = max((len(label) for label in labels), default=0)
        self.colour, self.colours = colour, dict[str, str]()

    def __call__(self, label: str, text: str) -> None:
        self.width = max(self.width, len(label))
        colour = None
        if self.colour:
            colour = self.colours.setdefault(label, COLOURS[len(self.colours) % len(COLOURS)])
        sys.stdout.write(prefix(label, self.width, colour) + text + "\n")


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not (data_dir / "logs").is_dir():
        print(f"brkcoin: no logs in {data_dir} (no {data_dir / 'logs'}); `brkcoin up` "
              "writes them there", file=sys.stderr)
        return 2
    try:
        chosen = choose(args.names, {s.name for s in discover(data_dir)})
        since = parse_since(args.since, time.time()) if args.since else None
    except ValueError as e:
        print(f"brkcoin: {e}", file=sys.stderr)
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # a terminal that isn't UTF-8: no crash

    stopped: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)  # acted on between lines and polls: output stays whole

    # Both, explicitly: a background job starts with SIGINT ignored.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _show(data_dir, chosen, since, args.follow, lambda: bool(stopped))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`brkcoin logs | head`): end quietly, and keep Python's
        # own flush at exit from failing on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _show(data_dir: Path, chosen: set[str], since: float | None, follow: bool,
          stopped: Callable[[], bool]) -> None:
    sources = [s for s in discover(data_dir) if s.name in chosen]
    readers = {s.path: Reader(s.path) for s in sources}
    show = Printer((s.label for s in sources), use_colour(sys.stdout, os.environ))
    streams = [stamped(readers[s.path].lines(final=not follow, stop=stopped),
                       anchor_of(s.path, stopped), s.label) for s in sources]
    for entry in merge(streams):
        if stopped():
            return
        if since is None or entry.time >= since:
            show(entry.label, entry.text)
    while follow and not stopped():
        sys.stdout.flush()
        time.sleep(POLL)
        sources = [s for s in discover(data_dir) if s.name in chosen]
        present = {s.path for s in sources}
        for path in [p for p in readers if p not in present]:
            del readers[path]  # pruned: a file made again under its name is new
        for source in sources:
            # A new instance's file is read from its start.
            for text in readers.setdefault(source.path, Reader(source.path)).lines(
                    stop=stopped):
                show(source.label, text)
                if stopped():
                    return
