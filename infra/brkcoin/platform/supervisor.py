"""The control plane: instances started, watched, replaced and scaled.

As on Cloud Run or Knative, each function has one URL, its front door
(proxy.py), and N instances behind it: each a plain `functions-framework`
process on a private loopback port. The platform

- scales a function live: `scale(name, n)` starts instances and adds them to
  the door once they answer, or retires some (the door stops sending them
  requests, those in flight finish, then SIGTERM lets the function drain);
- restarts any instance that dies with back-off (1, 2, 4 ... 30 s), as
  `restart: always` does, and the embedded Redis after 0.25, 0.5, 1, then 2 s
  (backoff.py; both reset after a minute of health); the door holds requests in line
  meanwhile rather than failing them. An instance that times out again and again
  (frozen) is killed and replaced, as a failed liveness probe would have it;
- autoscales the worker: enough instances for the invocations in flight at its
  per-instance concurrency, scaling in only idle instances after a quiet minute;
- publishes its state every beat: to Redis (`brkcoin:platform`, read by the
  web UI) and to whoever asks `state()`.

Everything runs on one asyncio event loop, in the main thread: instances are
started from it, and PR_SET_PDEATHSIG follows the thread that forked.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio

from brkcoin.layout import FUNCTIONS, Function
from brkcoin.platform import processes
from brkcoin.platform.backoff import Backoff
from brkcoin.platform.disk import Disk
from brkcoin.platform.processes import FunctionProcess, free_port
from brkcoin.platform.proxy import FrontDoor, Instance
from brkcoin.platform.redis_server import RedisServer, RedisUnavailable


def instance_backoff() -> Backoff:
    """1, 2, 4 ... 30 s between restarts, from 1 s again after a minute up."""
    return Backoff(first=1.0, cap=30.0, reset_after=60.0)

SCALE_IN_AFTER = 60.0  # seconds of lower demand before the worker scales in
BEAT = 0.5  # seconds between the control plane's looks
KEEP_LOGS = 5  # log files kept per function of instances that have ended


@dataclass(eq=False)
class Running:
    """One instance: its process and its place behind the door."""

    process: FunctionProcess
    door: Instance
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    probing: bool = False
    retiring: bool = False
    restart_at: float = 0.0  # when dead: not before then
    backoff: Backoff = field(default_factory=instance_backoff)  # handed on to its replacement


@dataclass(eq=False)
class Service:
    """A function as the platform runs it."""

    function: Function
    url: str
    door: FrontDoor
    env: dict[str, str]
    wanted: int
    instances: list[Running] = field(default_factory=list)
    restarts: int = 0
    replaced: int = 0  # killed for timing out again and again
    counter: int = 0  # names instances rng-1, rng-2, ...
    demand: deque[tuple[float, int]] = field(default_factory=deque)  # autoscaler's memory

    @property
    def live(self) -> list[Running]:
        return [r for r in self.instances if not r.retiring]


class Platform:
    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        redis_port: int = 6380,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
        scale: dict[str, int] | None = None,
        concurrency: dict[str, int] | None = None,
        autoscale: tuple[str, ...] = ("worker",),
        timeouts: dict[str, float] | None = None,
        redis_password: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.logs = self.data_dir / "logs"
        self.disk = Disk()
        ports = {n: f.port for n, f in FUNCTIONS.items()} | (ports or {})
        # Redis outlives a killed `brkcoin up` a little: the worker drains into it.
        self.redis = None if redis_url else RedisServer(self.data_dir / "redis", redis_port,
                                                        host, linger=0.6,
                                                        password=redis_password)
        self.redis_url = self.redis.url if self.redis else str(redis_url)
        self.redis_restarts = 0
        self.redis_restart_at: float | None = None
        self.redis_backoff = Backoff()
        self.urls = {n: f"http://{host}:{ports[n]}" for n in FUNCTIONS}
        shared = {"REDIS_URL": self.redis_url, "RNG_URL": self.urls["rng"],
                  "HASHER_URL": self.urls["hasher"], "WORKER_URL": self.urls["worker"]}
        concurrency, timeouts = concurrency or {}, timeouts or {}
        self.services = {
            name: Service(
                function, self.urls[name],
                FrontDoor(name, concurrency.get(name, function.concurrency),
                          line_timeout=timeouts.get(name, function.timeout),
                          request_timeout=timeouts.get(name, function.timeout)),
                shared | (env or {}), (scale or {}).get(name, 1),
            )
            for name, function in FUNCTIONS.items()
        }
        self.ports = ports
        self.autoscaled = autoscale
        # Requests known to be coming (the scheduler's fan-out): capacity for them
        # is there before the tick, so no invocation waits in line for an instance.
        self.expected: dict[str, int] = {}
        # More to publish beside the functions (`up` adds its scheduler's state).
        self.report: Callable[[], dict[str, Any]] = dict
        self._state: redis.asyncio.Redis | None = None

    # -- start and stop --
    async def start(self, timeout: float = 30) -> Platform:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # stack.json holds the Redis URL, password and all
        for name, port in self.ports.items():
            processes.check_port_free(self.host, port, name)
        try:
            if self.redis:
                self.redis.start()
                self.redis_backoff.started(time.monotonic())
            for service in self.services.values():
                processes.compile_folder(service.function)
            for name, service in self.services.items():
                try:
                    await service.door.start(self.host, self.ports[name])
                except OSError as e:
                    raise processes.PortInUse(f"{name} cannot listen on {self.host}:"
                                              f"{self.ports[name]}: {e.strerror or e}") from e
            for service in self.services.values():
                for _ in range(service.wanted):
                    self._spawn(service)
            await self._await_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _await_ready(self, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        everyone = [(s, r) for s in self.services.values() for r in s.instances]
        while not all(r.ready for _, r in everyone):
            for service, running in everyone:
                process = running.process.process
                if process is not None and process.poll() is not None:
                    raise processes.StartFailed(
                        f"{running.process.instance} exited; see {running.process.log}")
                self._probe(service, running)
            if time.monotonic() > give_up:
                late = [r.process.instance for _, r in everyone if not r.ready]
                raise processes.StartFailed(f"{', '.join(late)} did not answer in {timeout} s; "
                                            f"see {self.logs}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM every instance at once (the worker drains into Redis, which it
        alone needs), then Redis once they are gone."""
        everyone = [r.process for s in self.services.values() for r in s.instances]
        for process in everyone:
            process.terminate()
        give_up = time.monotonic() + 10  # the doors carry the drained answers meanwhile
        while any(p.alive for p in everyone) and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        for process in everyone:
            process.kill()  # what lingers past the grace, all at once
        for process in everyone:
            process.stop()  # reap
        for service in self.services.values():
            await service.door.close()
        if self._state is not None:
            await self._state.aclose()
        if self.redis:
            self.redis.stop()

    # -- instances --
    def _spawn(self, service: Service, backoff: Backoff | None = None) -> Running:
        """A new instance; a replacement takes on the back-off of the one it replaces."""
        service.counter += 1
        name = f"{service.function.name}-{service.counter}"
        port = free_port(self.host)
        process = FunctionProcess(service.function, port, service.env, self.logs, self.host,
                                  name=name, disk=self.disk)
        running = Running(process.start(), Instance(name, self.host, port),
                          backoff=backoff or instance_backoff())
        running.backoff.started(running.started)
        service.instances.append(running)
        return running

    def _probe(self, service: Service, running: Running) -> None:
        """Ask the instance's health check, in the background; it joins the door
        once it answers."""
        if running.probing or running.ready:
            return
        running.probing = True

        async def probe() -> None:
            try:
                if await processes.answers(running.door.host, running.door.port, 0.5):
                    if not running.ready and not running.retiring:
                        running.ready = True
                        service.door.add(running.door)
            finally:
                running.probing = False

        asyncio.get_running_loop().create_task(probe())

    def scale(self, name: str, wanted: int) -> None:
        service = self.services[name]
        limit = service.function.max_instances
        if not 1 <= wanted <= limit:
            raise ValueError(f"{name} takes 1 to {limit} instances, not {wanted}")
        service.wanted = wanted

    def _converge(self, service: Service) -> None:
        live = service.live
        for _ in range(service.wanted - len(live)):
            self._spawn(service)
        surplus = len(live) - service.wanted
        if surplus > 0:
            # The least busy go first; the worker's autoscaler only ever retires
            # idle ones (Cloud Run scales in idle instances).
            for running in sorted(live, key=lambda r: r.door.in_flight)[:surplus]:
                self._retire(service, running)

    def _retire(self, service: Service, running: Running) -> None:
        running.retiring = True
        running.door.draining = True  # no new requests

        async def retire() -> None:
            await service.door.remove(running.door, timeout=2.0)
            running.process.terminate()

        asyncio.get_running_loop().create_task(retire())

    # -- the heartbeat --
    async def beat(self) -> None:
        """Supervise, converge on the wanted scale, autoscale, publish."""
        now = time.monotonic()
        for name, service in self.services.items():
            if name in self.autoscaled:
                self._autoscale(service, now)
            self._supervise(service, now)
            self._converge(service)
        self._supervise_redis(now)
        await self._publish()

    def _supervise(self, service: Service, now: float) -> None:
        for running in list(service.instances):
            process = running.process.process
            alive = process is not None and process.poll() is None
            if alive and running.door.unhealthy and not running.retiring:
                assert process is not None
                processes.signal_group(process.pid, signal.SIGKILL)  # frozen: replaced
                service.replaced += 1
                running.door.timeouts = 0
                continue  # reaped as dead at the next beat
            if alive:
                if not running.ready:
                    self._probe(service, running)
                continue
            if running.retiring:  # done draining and gone: as wanted
                running.process.stop()
                service.instances.remove(running)
                self._prune_logs(service)
                continue
            if running.restart_at == 0.0:  # it just died
                service.door.drop(running.door)
                running.restart_at = now + running.backoff.failed(now)
                running.process.stop()  # reap it, and what is left of its group
            elif now >= running.restart_at:
                service.restarts += 1
                service.instances.remove(running)
                self._spawn(service, running.backoff)
                self._prune_logs(service)

    def _prune_logs(self, service: Service) -> None:
        """Keep the logs of the last KEEP_LOGS ended instances of the function; an
        ended instance's run folder goes at once."""
        live = {r.process.instance for r in service.instances}
        name = service.function.name

        def ended(pattern: str) -> list[Path]:
            numbered = [p for p in self.logs.glob(pattern)
                        if p.stem.removeprefix(f"{name}-").isdigit() and p.stem not in live]
            return sorted(numbered, key=lambda p: int(p.stem.removeprefix(f"{name}-")))

        try:
            for path in ended(f"{name}-*.log")[:-KEEP_LOGS]:
                path.unlink(missing_ok=True)
            for folder in ended(f"run/{name}-*"):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError as e:
            self.disk.failure("pruning the logs", e)

    def _supervise_redis(self, now: float) -> None:
        """Restart the embedded Redis when it died, after a back-off that stays
        short (it is the wallet) and resets after a minute of health."""
        server = self.redis
        if server is None or server.alive:
            return
        if self.redis_restart_at is None:
            self.redis_restart_at = now + self.redis_backoff.failed(now)
        elif now >= self.redis_restart_at:
            self.redis_restarts += 1
            self.redis_restart_at = None
            try:
                server.launch()  # answers in a moment; the worker retries meanwhile
                self.redis_backoff.started(now)
            except (processes.PortInUse, RedisUnavailable, OSError):
                self.redis_restart_at = now + self.redis_backoff.failed(now)

    def _autoscale(self, service: Service, now: float) -> None:
        """Instances for the requests in flight and in line, at the per-instance
        concurrency; scale in only after SCALE_IN_AFTER seconds of lower demand."""
        door = service.door
        per_instance = door.concurrency or service.function.concurrency
        demand = max(door.in_flight + door.queued, self.expected.get(service.function.name, 0))
        needed = math.ceil(demand / per_instance) if per_instance else 1
        needed = max(1, min(service.function.max_instances, needed))
        service.demand.append((now, needed))
        while service.demand and now - service.demand[0][0] > SCALE_IN_AFTER:
            service.demand.popleft()
        wanted = max(n for _, n in service.demand)
        idle = [r for r in service.live if r.door.in_flight == 0]
        if wanted < len(service.live) and not idle:
            wanted = len(service.live)  # nothing idle to retire yet
        service.wanted = wanted

    # -- state --
    def state(self) -> dict[str, Any]:
        return {
            "functions": {
                name: {
                    "instances": len([r for r in s.live if r.ready]),
                    "wanted": s.wanted,
                    "concurrency": s.door.concurrency,
                    "in_flight": s.door.in_flight,
                    "queued": s.door.queued,
                    "restarts": s.restarts,
                    "replaced": s.replaced,
                    "url": s.url,
                }
                for name, s in self.services.items()
            },
            "redis": {"url": redacted(self.redis_url), "embedded": self.redis is not None,
                      "password": self.redis is None or self.redis.secured,
                      "restarts": self.redis_restarts},
            "disk": self.disk.state(),
        }

    async def _publish(self) -> None:
        state = self.state()
        public = {"functions": {n: {k: v for k, v in f.items() if k != "url"}
                                for n, f in state["functions"].items()},
                  "disk": state["disk"]} | self.report()
        try:
            if self._state is None:
                self._state = redis.asyncio.Redis.from_url(
                    self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            await self._state.set("brkcoin:platform", json.dumps(public), ex=5)
        except (redis.RedisError, OSError, TimeoutError):
            pass  # Redis down: the status line says so; nothing to publish to

    def pids(self) -> list[tuple[str, int]]:
        found = [(r.process.instance, r.process.process.pid) for s in self.services.values()
                 for r in s.instances if r.process.process is not None]
        if self.redis:
            found += self.redis.pids()
        return found


def redacted(url: str) -> str:
    """The URL with its password, if any, as *** (for what is shown or printed)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{parts.hostname}"
                          + (f":{parts.port}" if parts.port else "")).geturl()
