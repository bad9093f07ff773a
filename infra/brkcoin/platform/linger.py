"""python linger.py SECONDS COMMAND...: run COMMAND (redis-server) as our child and
stop it (SIGTERM) SECONDS after we are sent SIGTERM; end with it when it ends.

Why: when `brkcoin up` is killed with -9, all its children get SIGTERM at once
(PR_SET_PDEATHSIG). Redis must outlive the worker instances draining on that same
signal, so their last flush lands. And if we are killed (-9, alone or with our
process group), the child is killed too: its parent-death signal is SIGKILL, so it
is never left running on its port with no one watching it.

Standard library only, started with `python -I -S` (about 10 ms): no brkcoin import.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
WATCHED = {signal.SIGTERM, signal.SIGCHLD}
STOP_TIMEOUT = 10.0  # seconds the child gets to stop on SIGTERM before SIGKILL


def main(argv: list[str]) -> int:
    delay, command = float(argv[1]), argv[2:]
    # Blocked, the signals wait for sigwait below: no handler races the child's start.
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    us = os.getpid()

    def child_setup() -> None:  # in the child, between fork and exec
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)  # the mask survives exec
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != us:  # we died before the prctl took hold
            os._exit(1)

    child = subprocess.Popen(command, preexec_fn=child_setup)
    stop_at: float | None = None
    while child.poll() is None:
        if stop_at is None:
            if signal.sigwait(WATCHED) == signal.SIGTERM:
                stop_at = time.monotonic() + delay
        elif (left := stop_at - time.monotonic()) > 0:
            signal.sigtimedwait(WATCHED, left)  # a SIGCHLD ends the wait early
        else:
            child.terminate()
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    code = child.returncode
    return 128 - code if code < 0 else code  # as a shell reports a signalled child


if __name__ == "__main__":
    sys.exit(main(sys.argv))
