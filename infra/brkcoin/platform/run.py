"""One event loop for the whole platform, shared by `brkcoin up` and `brkcoin lesson`.

The doors, the supervision, the scheduler and its invocations, `brkcoin scale`
and the status all run as callbacks and tasks on one asyncio loop (uvloop) in the
main thread, so no state is shared between threads. SIGINT, SIGTERM and SIGHUP
(a closed terminal) end `main`, once; the platform then stops in order. SIGINT
is handled explicitly: a script's background job starts with it ignored.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from brkcoin.platform.scheduler import Scheduler
from brkcoin.platform.supervisor import BEAT, Platform

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_WAIT = 5.0  # seconds the heartbeat and the scheduler get to end once cancelled


class Stopped(Exception):
    """A signal asked the platform to stop before it was up."""


def serve(platform: Platform, scheduler: Scheduler | None,
          main: Callable[[], Awaitable[T]],
          on_beat: Callable[[], Awaitable[None]] | None = None, signals: bool = True) -> T:
    """Start the platform, run the scheduler and the heartbeat beside `main`, and
    stop everything when `main` returns or a signal comes. Raises Stopped when a
    signal came before `main` returned. `signals=False` leaves them alone (a
    platform run from a thread other than the main one: tests)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(platform, scheduler, main, on_beat,
                                 SIGNALS if signals else ()))


async def _serve(platform: Platform, scheduler: Scheduler | None,
                 main: Callable[[], Awaitable[T]],
                 on_beat: Callable[[], Awaitable[None]] | None,
                 signals: tuple[signal.Signals, ...]) -> T:
    loop = asyncio.get_running_loop()
    this = asyncio.current_task()
    assert this is not None
    signalled: list[int] = []

    def stop(signum: int) -> None:
        if not signalled:  # one clean stop, however many signals
            signalled.append(signum)
            this.cancel()

    for each in signals:
        loop.add_signal_handler(each, stop, each)
    background: list[asyncio.Task[None]] = []
    try:
        await platform.start()
        background.append(asyncio.create_task(_heartbeat(platform, on_beat)))
        if scheduler is not None:
            background.append(asyncio.create_task(scheduler.run()))
        return await main()
    except asyncio.CancelledError:
        if signalled:
            raise Stopped(signal.Signals(signalled[0]).name) from None
        raise
    finally:
        for task in background:
            task.cancel()
        if background:  # bounded: a task that swallowed its cancel must not hold the stop
            await asyncio.wait(background, timeout=STOP_WAIT)
        await platform.stop()
        # What was under way (an invocation's answer, say) gets a moment to end.
        rest = asyncio.all_tasks() - {this}
        if rest:
            await asyncio.wait(rest, timeout=2)
        for each in signals:
            loop.remove_signal_handler(each)


async def _heartbeat(platform: Platform,
                     on_beat: Callable[[], Awaitable[None]] | None) -> None:
    """Every BEAT: the control plane's look, then the caller's (status, control).
    A failure in one beat is said and counted; the next beat comes all the same."""
    failures = 0
    this = asyncio.current_task()
    while True:
        try:
            await platform.beat()
            if on_beat is not None:
                await on_beat()
        except Exception as e:  # never the end of supervision
            failures += 1
            _say(f"heartbeat failed ({failures} so far): {type(e).__name__}: {e}")
        if this is not None and this.cancelling():
            # A stop whose CancelledError a library turned into an error it raised
            # (a Redis call under way when the signal came): stop all the same.
            raise asyncio.CancelledError
        await asyncio.sleep(BEAT)


def _say(message: str) -> None:
    try:
        print(json.dumps({"severity": "ERROR", "message": message}), file=sys.stderr,
              flush=True)
    except OSError:
        pass
