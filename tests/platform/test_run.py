"""The heartbeat stops when it is cancelled, even when a library it awaits turns
the CancelledError into an error of its own and returns (as a Redis call under
way when the stop signal came did: `up` then beat on for ever)."""

from __future__ import annotations

import asyncio

from brkcoin.platform import run


class _Swallowing:
    """A platform whose beat eats a cancellation, as a client library's error
    handling did."""

    beats = 0

    async def beat(self) -> None:
        self.beats += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # "connection lost": the library's own error, caught by its caller


def test_a_cancelled_heartbeat_ends_though_its_beat_swallowed_the_cancel() -> None:
    async def stop_it() -> int:
        platform = _Swallowing()
        task = asyncio.create_task(run._heartbeat(platform, None))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done == {task} and task.cancelled()
        return platform.beats

    assert asyncio.run(stop_it()) == 1
