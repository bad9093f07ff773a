"""`brkcoin logs` beside a real `brkcoin up`: it prints the worker's lines under
their instance's prefix, and with -f prints the new ones as the worker writes them,
then ends cleanly (exit 0, no traceback) on SIGTERM, on SIGINT even when started
with SIGINT ignored (as a background job is), and when its reader goes away."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time

from conftest import BRKCOIN

WORKER_LINE = re.compile(r"worker-\d+ +\| (\{.*\})$")


def invocations(lines: list[str]) -> set[str]:
    """The invocation ids of the worker's summary lines among `lines`."""
    found = set()
    for line in lines:
        if (m := WORKER_LINE.match(line)) and '"worker"' in line:
            found.add(json.loads(m.group(1))["worker"]["invocation"])
    return found


class Follower:
    """A `brkcoin logs -f worker` subprocess, its stdout read as it comes."""

    def __init__(self, data_dir: str, sigint_ignored: bool = False, one_line: bool = False
                 ) -> None:
        self.process = subprocess.Popen(
            [BRKCOIN, "logs", "-f", "worker", "--data-dir", data_dir],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if sigint_ignored else None,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(one_line,), daemon=True)
        self.reader.start()

    def _read(self, one_line: bool) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if one_line:
                return  # as `head -1`

    def wait_for_new(self, old: set[str], timeout: float = 15) -> None:
        give_up = time.monotonic() + timeout
        while not invocations(self.lines) - old:
            assert self.process.poll() is None, self.process.stderr.read()  # type: ignore
            assert time.monotonic() < give_up, f"no new invocation in {self.lines}"
            time.sleep(0.1)

    def end_with(self, signum: int) -> str:
        """Send `signum`; it must exit 0 within 2 s. Its stderr."""
        self.process.send_signal(signum)
        try:
            code = self.process.wait(2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running 2 s after {signal.Signals(signum).name}"
                                 ) from None
        self.reader.join(2)
        stderr = self.process.stderr.read()  # type: ignore[union-attr]
        assert code == 0, (code, stderr)
        return stderr


def test_logs_prints_and_follows_the_workers_lines_and_ends_cleanly(up):
    stack = up("--every", "2s")
    stack.wait_for("brkcoin is up")
    data_dir = str(stack.data_dir)
    give_up = time.monotonic() + 20
    while not stack.summaries():  # the first invocation's line
        assert time.monotonic() < give_up, stack.output
        time.sleep(0.2)

    shown = subprocess.run([BRKCOIN, "logs", "worker", "--data-dir", data_dir],
                           capture_output=True, text=True, timeout=10)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    lines = shown.stdout.splitlines()
    assert lines and all(line.startswith("worker-1 | ") for line in lines), lines
    assert invocations(lines) >= {s["worker"]["invocation"] for s in stack.summaries()[:1]}

    # Three at once, to wait for the worker's next lines only once.
    termed, inted, piped = (Follower(data_dir), Follower(data_dir, sigint_ignored=True),
                            Follower(data_dir, one_line=True))
    old = invocations(lines)
    for follower in (termed, inted):
        follower.wait_for_new(old)
        assert all(WORKER_LINE.match(line) for line in follower.lines), follower.lines
    # Its reader gone after a line (`brkcoin logs -f | head -1`): it ends quietly at
    # its next line, which the worker's next invocation brings.
    piped.reader.join(5)
    assert piped.lines and not piped.reader.is_alive()
    piped.process.stdout.close()  # type: ignore[union-attr]
    assert piped.process.wait(15) == 0
    assert piped.process.stderr.read() == ""  # type: ignore[union-attr]

    for follower, signum in ((termed, signal.SIGTERM), (inted, signal.SIGINT)):
        assert "Traceback" not in follower.end_with(signum)
