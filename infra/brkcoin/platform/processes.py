"""Start, watch and stop the local processes, leaving none behind.

Each child gets PR_SET_PDEATHSIG, so it is sent SIGTERM even when its parent
dies without cleaning up (kill -9, a closed terminal). The signal follows the
*thread* that started the child, so start children from a long-lived thread
(the main one), not from a pool.
"""

from __future__ import annotations

import asyncio
import compileall
import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from brkcoin.layout import Function
from brkcoin.platform.disk import Disk

PR_SET_PDEATHSIG = 1
SOCKET_NAME = "gunicorn.ctl"  # gunicorn's control socket, in $XDG_RUNTIME_DIR
MAX_SOCKET_PATH = 107  # sun_path's 108 bytes, less the closing NUL


class PortInUse(RuntimeError):
    pass


class StartFailed(RuntimeError):
    pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None,
    disk: Disk | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, its output appended to `log`; when
    the log cannot be opened (a full disk), it runs all the same, unlogged."""
    out: IO[bytes] | int = subprocess.DEVNULL
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - closed below, once the child has it
    except OSError as e:
        (disk or Disk()).failure(f"log {log}", e)
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us, and we stop children in order
            preexec_fn=_die_with_parent,
        )
    finally:
        if not isinstance(out, int):
            out.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it lingers."""
    if process.poll() is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout)
    signal_group(process.pid, signal.SIGKILL)  # grandchildren left in the group


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to a child's process group (each child leads its own)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise PortInUse(
                f"port {host}:{port} for {what} is already in use "
                f"(another `brkcoin up`? find it with: ss -ltnp 'sport = :{port}')"
            )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def control_folder(wanted: Path) -> Path:
    """Where an instance's gunicorn (>= 25) opens its control socket: its own folder
    ($XDG_RUNTIME_DIR), so several starting at once don't collide. A socket's path
    holds at most 107 bytes; under a long data folder, a short stand-in in the
    temp folder, named by the wanted one's digest (gunicorn removes its socket
    when it stops), so no instance logs "AF_UNIX path too long"."""
    if len(os.fsencode(wanted / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        return wanted
    digest = hashlib.sha256(os.fsencode(wanted)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"brkcoin-{os.getuid()}-{digest}"


def compile_folder(function: Function) -> None:
    """Byte-compile a function's folder once, as a platform builds a function once
    and starts it many times: every instance started after (scale-outs, restarts)
    loads the bytecode instead of compiling its modules again."""
    compileall.compile_dir(function.folder, quiet=1, workers=1)


def functions_framework_command(function: Function, host: str, port: int) -> list[str]:
    """The plain Functions Framework command DESIGN.md prescribes for every target."""
    executable = Path(sys.executable).with_name("functions-framework")
    command = [
        str(executable),
        "--target", function.name,
        "--source", str(function.source),
        "--host", host,
        "--port", str(port),
    ]
    return command


class FunctionProcess:
    """One `functions-framework` process serving one function on host:port: one
    instance of it, named `name` (default: the function's) in logs."""

    def __init__(
        self,
        function: Function,
        port: int,
        env: dict[str, str],
        log_dir: Path,
        host: str = "127.0.0.1",
        name: str = "",
        disk: Disk | None = None,
    ) -> None:
        self.function, self.port, self.host = function, port, host
        self.instance = name or function.name
        self.log = Path(log_dir) / f"{self.instance}.log"
        run_dir = control_folder(Path(log_dir) / "run" / self.instance)
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(run_dir), **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.disk = disk

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return self.function.name

    def start(self) -> FunctionProcess:
        check_port_free(self.host, self.port, self.name)
        try:
            Path(self.env["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            (self.disk or Disk()).failure(f"run folder of {self.instance}", e)
        command = functions_framework_command(self.function, self.host, self.port)
        self.process = spawn(command, self.log, self.env, self.disk)
        return self

    def wait_ready(self, timeout: float = 20) -> FunctionProcess:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process is None or self.process.poll() is not None:
                raise StartFailed(f"{self.name} exited; see {self.log}")
            if self.is_up(0.5):
                return self
            time.sleep(0.02)
        raise StartFailed(f"{self.name} did not answer on {self.url} in {timeout}s; see {self.log}")

    def is_up(self, timeout: float = 1.0) -> bool:
        return is_up(self.url, timeout)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the function drains and exits by itself."""
        if self.process is not None and self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL its process group, without waiting."""
        if self.process is not None:
            signal_group(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


async def answers(host: str, port: int, timeout: float) -> bool:
    """True when a function answers 200 to its `GET /` health check, on the loop."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: health\r\nConnection: close\r\n\r\n")
                status = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return status.startswith(b"HTTP/1.1 200 ")


def is_up(url: str, timeout: float = 1.0) -> bool:
    """True when a function answers its `GET /` health check on `url`."""
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:  # HTTPError included
        return False
