"""gunicorn's control socket under a long data folder: a socket's path holds at
most 107 bytes, so a long one gets a short stand-in folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import (
    MAX_SOCKET_PATH,
    SOCKET_NAME,
    FunctionProcess,
    control_folder,
    free_port,
)


def test_a_short_folder_is_kept_and_a_long_one_gets_a_short_stand_in(tmp_path: Path) -> None:
    short = tmp_path / "run" / "rng-1"
    assert control_folder(short) == short
    long = tmp_path / ("d" * 120) / "logs" / "run" / "rng-1"
    stand_in = control_folder(long)
    assert len(os.fsencode(stand_in / SOCKET_NAME)) <= MAX_SOCKET_PATH
    assert control_folder(long) == stand_in  # the same folder every time for one instance
    assert control_folder(long.with_name("rng-2")) != stand_in  # its own for each


def test_an_instance_under_a_long_data_folder_serves_and_logs_no_socket_error(
        tmp_path: Path) -> None:
    logs = tmp_path / ("a-long-data-folder-" * 6) / "logs"
    process = FunctionProcess(FUNCTIONS["rng"], free_port(), {"RNG_DELAY": "0"}, logs)
    socket_folder = Path(process.env["XDG_RUNTIME_DIR"])
    try:
        process.start().wait_ready()
        give_up = time.monotonic() + 10  # gunicorn opens it from a thread of its own
        while not (socket_folder / SOCKET_NAME).exists():
            assert time.monotonic() < give_up, process.log.read_text()
            time.sleep(0.05)
    finally:
        process.stop()
    assert "AF_UNIX" not in process.log.read_text()
