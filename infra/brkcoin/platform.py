"""The local serverless platform that `brkcoin up` runs.

As on Cloud Run or Knative, each function has one URL, its front door
(frontdoor.py), and N instances behind it: each a plain `functions-framework`
process on a private loopback port. The platform

- scales a function live: `scale(name, n)` starts instances and adds them to
  the door once they answer, or retires some (the door stops sending them
  requests, those in flight finish, then SIGTERM lets the function drain);
- restarts any instance, and the embedded Redis, that dies, with back-off
  (1, 2, 4 ... 30 s), as `restart: always` does; the door holds requests in line
  meanwhile rather than failing them;
- autoscales the worker: enough instances for the invocations in flight at its
  per-instance concurrency, scaling in only idle instances after a quiet minute;
- publishes its state every second: to Redis (`brkcoin:platform`, read by the
  web UI) and to the run file (read by `brkcoin status` and `brkcoin scale`).

Instances are started from the thread that calls `start`, `tick` and `scale`
(the main thread): PR_SET_PDEATHSIG follows the thread that forked.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from brkcoin import processes
from brkcoin.frontdoor import FrontDoor, Instance
from brkcoin.layout import FUNCTIONS, Function
from brkcoin.processes import FunctionProcess, free_port
from brkcoin.redis_server import RedisServer

T = TypeVar("T")
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # seconds an instance must live before its back-off resets
SCALE_IN_AFTER = 60.0  # seconds of lower demand before the worker scales in


@dataclass(eq=False)
class Running:
    """One instance: its process and its place behind the door."""

    process: FunctionProcess
    door: Instance
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False
    restart_at: float = 0.0  # when dead: not before then
    backoff: float = 1.0


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
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.logs = self.data_dir / "logs"
        ports = {n: f.port for n, f in FUNCTIONS.items()} | (ports or {})
        # Redis outlives a killed `brkcoin up` a little: the worker drains into it.
        self.redis = None if redis_url else RedisServer(self.data_dir / "redis", redis_port,
                                                        host, linger=0.6)
        self.redis_url = redis_url or RedisServer.url_of(host, redis_port)
        self.redis_restarts = 0
        self.redis_restart_at = 0.0
        self.urls = {n: f"http://{host}:{ports[n]}" for n in FUNCTIONS}
        shared = {"REDIS_URL": self.redis_url, "RNG_URL": self.urls["rng"],
                  "HASHER_URL": self.urls["hasher"], "WORKER_URL": self.urls["worker"]}
        concurrency = concurrency or {}
        self.services = {
            name: Service(
                function, self.urls[name],
                FrontDoor(name, concurrency.get(name, function.concurrency)),
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
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="front doors")
        self._state: redis.Redis | None = None

    # -- the doors' event loop, in its own thread --
    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _call(self, function: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(function, *args)

    # -- start and stop --
    def start(self, timeout: float = 30) -> Platform:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name, port in self.ports.items():
            processes.check_port_free(self.host, port, name)
        try:
            if self.redis:
                self.redis.start()
            self.thread.start()
            for service in self.services.values():
                processes.compile_folder(service.function)
            for name, service in self.services.items():
                self._run(service.door.start(self.host, self.ports[name]))
            for service in self.services.values():
                for _ in range(service.wanted):
                    self._spawn(service)
            self._await_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _await_ready(self, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        while not all(r.ready for s in self.services.values() for r in s.instances):
            for service in self.services.values():
                for running in service.instances:
                    if not running.ready and running.process.process is not None:
                        if running.process.process.poll() is not None:
                            raise processes.StartFailed(
                                f"{running.process.instance} exited; see {running.process.log}")
                        self._check_ready(service, running)
            if time.monotonic() > give_up:
                late = [r.process.instance for s in self.services.values()
                        for r in s.instances if not r.ready]
                raise processes.StartFailed(f"{', '.join(late)} did not answer in {timeout} s; "
                                            f"see {self.logs}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM every instance at once (the worker drains into Redis, which it
        alone needs), then Redis once they are gone."""
        everyone = [r.process for s in self.services.values() for r in s.instances]
        for process in everyone:
            process.terminate()
        for process in everyone:
            process.stop()
        if self.thread.is_alive():
            self._run(self._close_doors(), 10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if self.redis:
            self.redis.stop()

    async def _close_doors(self) -> None:
        for service in self.services.values():
            await service.door.close()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    # -- instances --
    def _spawn(self, service: Service) -> Running:
        service.counter += 1
        name = f"{service.function.name}-{service.counter}"
        port = free_port(self.host)
        process = FunctionProcess(service.function, port, service.env, self.logs, self.host,
                                  name=name)
        running = Running(process.start(), Instance(name, self.host, port))
        service.instances.append(running)
        return running

    def _check_ready(self, service: Service, running: Running) -> None:
        if running.process.is_up(0.3):
            running.ready = True
            self._call(service.door.add, running.door)

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
        running.door.draining = True  # read by the door's thread: no new requests
        future = asyncio.run_coroutine_threadsafe(
            service.door.remove(running.door, timeout=2.0), self.loop)
        future.add_done_callback(lambda _: running.process.terminate())

    # -- the platform's heartbeat, from the main thread --
    def tick(self) -> None:
        """Supervise, converge on the wanted scale, autoscale, publish."""
        now = time.monotonic()
        for name, service in self.services.items():
            if name in self.autoscaled:
                self._autoscale(service, now)
            self._supervise(service, now)
            self._converge(service)
        self._supervise_redis(now)
        self._publish()

    def _supervise(self, service: Service, now: float) -> None:
        for running in list(service.instances):
            process = running.process.process
            if process is not None and process.poll() is None:
                if not running.ready:
                    self._check_ready(service, running)
                elif now - running.started > STABLE_AFTER:
                    running.backoff = 1.0
                continue
            if running.retiring:  # done draining and gone: as wanted
                running.process.stop()
                service.instances.remove(running)
                continue
            if running.restart_at == 0.0:  # it just died
                running.door.draining = True
                self._call(service.door.drop, running.door)
                running.restart_at = now + running.backoff
                if process is not None:
                    processes.stop(process)  # reap it, and what is left of its group
            elif now >= running.restart_at:
                service.restarts += 1
                backoff = min(MAX_BACKOFF, running.backoff * 2)
                service.instances.remove(running)
                replacement = self._spawn(service)
                replacement.backoff = backoff

    def _supervise_redis(self, now: float) -> None:
        server = self.redis
        if server is None or server.process is None or server.process.poll() is None:
            return
        if self.redis_restart_at == 0.0:
            self.redis_restart_at = now + min(MAX_BACKOFF, 2.0 ** self.redis_restarts)
        elif now >= self.redis_restart_at:
            self.redis_restarts += 1
            self.redis_restart_at = 0.0
            try:
                server.process = None
                server.start()
            except Exception:  # it will be tried again, later
                self.redis_restart_at = now + MAX_BACKOFF

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
                    "url": s.url,
                }
                for name, s in self.services.items()
            },
            "redis": {"url": self.redis_url, "embedded": self.redis is not None,
                      "restarts": self.redis_restarts},
        }

    def _publish(self) -> None:
        state = self.state()
        public = {"functions": {n: {k: v for k, v in f.items() if k != "url"}
                                for n, f in state["functions"].items()}} | self.report()
        try:
            if self._state is None:
                self._state = redis.Redis.from_url(self.redis_url, socket_timeout=0.5,
                                                   socket_connect_timeout=0.5)
            self._state.set("brkcoin:platform", json.dumps(public), ex=5)
        except redis.RedisError:
            pass  # Redis down: the status line says so; nothing to publish to

    def pids(self) -> list[tuple[str, int]]:
        found = [(r.process.instance, r.process.process.pid) for s in self.services.values()
                 for r in s.instances if r.process.process is not None]
        if self.redis and self.redis.process:
            found.append(("linger-redis", self.redis.process.pid))
            if self.redis.server_pid:
                found.append(("redis", self.redis.server_pid))
        return found
