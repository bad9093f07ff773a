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
- autoscales every function a human has not pinned (`scale`), as Knative's KPA
  does (autoscaler.py decides; the door measures the load): to zero after a
  grace, and back from zero when a request comes, which the door holds in line
  meanwhile, as Knative's activator does. Each start says why (deployment,
  autoscaling, min instances, manual, restart) and is timed: its cold start,
  from the process's start to its first ready answer;
- throttles: a request waits in line at most max(10 s, 3.5 x the function's
  average cold start), as Cloud Run bounds it, then gets a 429;
- counts instance-seconds (each instance's life: what Cloud Run bills);
- logs each start and each change of the wanted count, with its reason, as JSON
  lines in logs/platform.log;
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
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis
import redis.asyncio

from brkcoin.layout import FUNCTIONS, Function, Scaling
from brkcoin.platform import processes
from brkcoin.platform.autoscaler import Autoscaler
from brkcoin.platform.backoff import Backoff
from brkcoin.platform.disk import Disk
from brkcoin.platform.door import DURATION_BUCKETS
from brkcoin.platform.metrics import MetricsServer
from brkcoin.platform.processes import FunctionProcess, free_port
from brkcoin.platform.proxy import FrontDoor, Instance
from brkcoin.platform.redis_server import RedisServer, RedisUnavailable


def instance_backoff() -> Backoff:
    """1, 2, 4 ... 30 s between restarts, from 1 s again after a minute up."""
    return Backoff(first=1.0, cap=30.0, reset_after=60.0)

BEAT = 0.5  # seconds between the control plane's looks
KEEP_LOGS = 5  # log files kept per function of instances that have ended
READY_POLL = 0.05  # seconds between health checks of a starting instance
# Cloud Run's bound on a request's wait for an instance: max(10 s, 3.5 x the
# average start-up time); past it, a 429.
MIN_WAIT, WAIT_PER_START = 10.0, 3.5
COLD_STARTS_AVERAGED = 10  # the latest starts the average cold start is taken over
HISTORY_EVERY, HISTORY_KEPT = 5.0, 120  # the instance count over time: 10 minutes


@dataclass(eq=False)
class Running:
    """One instance: its process and its place behind the door."""

    process: FunctionProcess
    door: Instance
    reason: str = "deployment"  # why it started, as Cloud Run's log says
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when it was found gone
    ready: bool = False
    retiring: bool = False
    cpu_seconds: float | None = None  # its group's CPU time at the last look (kind cpu)

    def serving(self) -> bool:
        """Alive and not being retired: worth waiting for."""
        return self.process.alive and not self.retiring
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
    autoscaler: Autoscaler
    pinned: bool  # a human fixed the count; else the autoscaler sets it
    instances: list[Running] = field(default_factory=list)
    restarts: int = 0
    replaced: int = 0  # killed for timing out again and again
    counter: int = 0  # names instances rng-1, rng-2, ...
    next_decision: float = 0.0
    panic: bool = False
    decision: dict[str, Any] | None = None  # the latest change of `wanted`, and why
    cold_starts: deque[float] = field(default_factory=lambda: deque(maxlen=COLD_STARTS_AVERAGED))
    started_count: int = 0  # instances that became ready (each a cold start)
    cold_start_at: float | None = None  # epoch seconds of the latest
    # Every cold start's time, in the door's duration buckets (for the metrics).
    init_durations: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    init_sum: float = 0.0
    ended_seconds: float = 0.0  # instance-seconds of instances that have ended
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY_KEPT))

    @property
    def live(self) -> list[Running]:
        return [r for r in self.instances if not r.retiring]

    @property
    def ready(self) -> int:
        return sum(1 for r in self.live if r.ready)

    def instance_seconds(self, now: float) -> float:
        return self.ended_seconds + sum(now - r.started for r in self.instances
                                        if r.ended is None)

    def average_cold_start(self) -> float:
        return sum(self.cold_starts) / len(self.cold_starts) if self.cold_starts else 0.0

    def wait_bound(self) -> float:
        """How long a request may wait in line: max(10 s, 3.5 x the average cold start)."""
        return max(MIN_WAIT, WAIT_PER_START * self.average_cold_start())


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
        timeouts: dict[str, float] | None = None,
        redis_password: bool = True,
        scaling: dict[str, Scaling] | None = None,
        bounds: dict[str, tuple[int, int]] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        """`scale` pins those functions' instance counts; the others autoscale with
        the spec's `Scaling` (or `scaling`'s) between the spec's min and max (or
        `bounds`'), starting at one instance (Knative's initial scale)."""
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
        scale, scaling, bounds = scale or {}, scaling or {}, bounds or {}
        self.services = {}
        for name, function in FUNCTIONS.items():
            each = concurrency.get(name, function.concurrency)
            low, high = bounds.get(name, (function.min_instances, function.max_instances))
            door = FrontDoor(name, each, line_timeout=MIN_WAIT,
                             request_timeout=timeouts.get(name, function.timeout))
            door.wake = lambda name=name: self._wake(name)
            self.services[name] = Service(
                function, self.urls[name], door, shared | (env or {}),
                wanted=scale.get(name, max(1, low)),
                autoscaler=Autoscaler(scaling.get(name, function.scaling), each, low, high),
                pinned=name in scale)
        self.ports = ports
        self.metrics_port = metrics_port
        self.metrics = MetricsServer(self)  # served when metrics_port is given
        # More to publish beside the functions (`up` adds its scheduler's state).
        self.report: Callable[[], dict[str, Any]] = dict
        self._state: redis.asyncio.Redis | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False

    # -- start and stop --
    async def start(self, timeout: float = 30) -> Platform:
        self.loop = asyncio.get_running_loop()  # where another thread may call it
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # stack.json holds the Redis URL, password and all
        for name, port in self.ports.items():
            processes.check_port_free(self.host, port, name)
        if self.metrics_port is not None:
            processes.check_port_free(self.host, self.metrics_port, "metrics")
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
            if self.metrics_port is not None:
                await self.metrics.start(self.host, self.metrics_port)
            for service in self.services.values():
                for _ in range(service.wanted):
                    self._spawn(service, "deployment")
            await self._await_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _await_ready(self, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        everyone = [r for s in self.services.values() for r in s.instances]
        while not all(r.ready for r in everyone):
            for running in everyone:
                process = running.process.process
                if process is not None and process.poll() is not None:
                    raise processes.StartFailed(
                        f"{running.process.instance} exited; see {running.process.log}")
            if time.monotonic() > give_up:
                late = [r.process.instance for r in everyone if not r.ready]
                raise processes.StartFailed(f"{', '.join(late)} did not answer in {timeout} s; "
                                            f"see {self.logs}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM every instance at once (the worker drains into Redis, which it
        alone needs), then Redis once they are gone."""
        self.stopping = True  # a request at an empty door starts nothing now
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
        await self.metrics.close()
        if self._state is not None:
            await self._state.aclose()
        if self.redis:
            self.redis.stop()

    # -- instances --
    def _spawn(self, service: Service, reason: str, backoff: Backoff | None = None) -> Running:
        """A new instance, and why; a replacement takes on the back-off of the one
        it replaces. It joins the door once its health check answers."""
        service.counter += 1
        name = f"{service.function.name}-{service.counter}"
        port = free_port(self.host)
        process = FunctionProcess(service.function, port, service.env, self.logs, self.host,
                                  name=name, disk=self.disk)
        running = Running(process.start(), Instance(name, self.host, port), reason,
                          backoff=backoff or instance_backoff())
        running.backoff.started(running.started)
        service.instances.append(running)
        self.log(f"{name} starting: {reason}", function=service.function.name,
                 instance=name, reason=reason)
        asyncio.get_running_loop().create_task(self._become_ready(service, running))
        return running

    async def _become_ready(self, service: Service, running: Running) -> None:
        """Ask its health check until it answers: then it takes requests, and the
        time since its process started is its cold start."""
        while running.serving():
            if await processes.answers(running.door.host, running.door.port, 0.5):
                if not running.serving():  # retired or died while it answered
                    return
                cold = time.monotonic() - running.started
                running.ready = True
                service.door.add(running.door)
                service.started_count += 1
                service.cold_starts.append(cold)
                service.init_durations[bisect_left(DURATION_BUCKETS, cold)] += 1
                service.init_sum += cold
                service.cold_start_at = time.time()
                self._throttle(service)
                self.log(f"{running.process.instance} ready after {cold:.2f} s (cold start)",
                         function=service.function.name, instance=running.process.instance,
                         cold_start_seconds=round(cold, 3))
                return
            await asyncio.sleep(READY_POLL)

    def _throttle(self, service: Service) -> None:
        service.door.rules.line_timeout = service.wait_bound()
        # A throttled client may come back once an instance could have started.
        service.door.retry_after = max(1, math.ceil(service.average_cold_start()))

    def scale(self, name: str, wanted: int) -> None:
        """Pin the function at `wanted` instances (`brkcoin scale rng=4`)."""
        service = self.services[name]
        limit = service.function.max_instances
        if not 1 <= wanted <= limit:
            raise ValueError(f"{name} takes 1 to {limit} instances, not {wanted}")
        if wanted != service.wanted or not service.pinned:
            self._decided(service, wanted, "pinned by `brkcoin scale`")
        service.wanted, service.pinned = wanted, True

    def autoscale(self, name: str, scaling: Scaling | None = None) -> None:
        """Hand the function back to the autoscaler (`brkcoin scale rng=auto`), with
        other settings if given (the lesson's cpu kind): a new autoscaler, which
        has seen nothing yet, as after `kubectl autoscale`."""
        service = self.services[name]
        if scaling is not None:
            old = service.autoscaler
            service.autoscaler = Autoscaler(scaling, service.door.concurrency, old.min_scale,
                                            old.max_scale)
        if service.pinned or scaling is not None:
            service.pinned, service.next_decision = False, 0.0
            self.log(f"{name} autoscaled ({service.autoscaler.scaling.kind}) from "
                     f"{service.wanted}", function=name)

    def _wake(self, name: str) -> None:
        """A request came to a door with no instance: scale from zero at once, as
        Knative's activator pokes the autoscaler; the door holds it meanwhile."""
        service = self.services[name]
        if service.wanted == 0 and not service.live and not self.stopping:
            self._decided(service, 1, "a request arrived at zero instances")
            service.wanted = 1
            self._converge(service)

    def _converge(self, service: Service) -> None:
        live = service.live
        if len(live) < service.wanted:
            low = service.autoscaler.min_scale
            reason = ("manual" if service.pinned else
                      "min instances" if len(live) < low else "autoscaling")
            for _ in range(service.wanted - len(live)):
                self._spawn(service, reason)
        surplus = len(live) - service.wanted
        if surplus > 0:
            # The least busy go first (Cloud Run scales in idle instances); the
            # door sends them nothing new, and what they have in flight finishes.
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
        """Supervise, autoscale, converge on the wanted scale, publish."""
        now = time.monotonic()
        for service in self.services.values():
            self._supervise(service, now)
            self._autoscale(service, now)
            self._converge(service)
            if not service.history or time.time() - service.history[-1][0] >= HISTORY_EVERY:
                service.history.append((time.time(), service.ready))
        self._supervise_redis(now)
        await self._publish()

    def _supervise(self, service: Service, now: float) -> None:
        for running in list(service.instances):
            process = running.process.process
            alive = process is not None and process.poll() is None
            if not alive and running.ended is None:
                running.ended = now
            if alive and running.door.unhealthy and not running.retiring:
                assert process is not None
                processes.signal_group(process.pid, signal.SIGKILL)  # frozen: replaced
                service.replaced += 1
                running.door.timeouts = 0
                continue  # reaped as dead at the next beat
            if alive:
                continue
            if running.retiring:  # done draining and gone: as wanted
                running.process.stop()
                self._forget(service, running)
                continue
            if running.restart_at == 0.0:  # it just died
                service.door.drop(running.door)
                running.restart_at = now + running.backoff.failed(now)
                running.process.stop()  # reap it, and what is left of its group
            elif now >= running.restart_at:
                service.restarts += 1
                self._forget(service, running)
                self._spawn(service, "restart", running.backoff)

    def _forget(self, service: Service, running: Running) -> None:
        """An instance that has ended: its life is counted, its log pruned."""
        service.ended_seconds += (running.ended or time.monotonic()) - running.started
        service.instances.remove(running)
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
        """Feed the autoscaler what the door saw since the last beat (and, for the
        cpu kind, the instances' CPU use); every tick, let it decide."""
        scaler = service.autoscaler
        average, seconds = service.door.rules.observe(now)
        if seconds > 0:
            scaler.record(now, average, seconds)
            if scaler.scaling.kind == "cpu":
                percent = self._cpu_percent(service, seconds)
                if percent is not None:
                    scaler.record_cpu(now, percent, seconds)
        if service.pinned or now < service.next_decision:
            return
        service.next_decision = now + scaler.scaling.tick
        decision = scaler.decide(now, service.ready)
        service.panic = decision.panic
        if decision.wanted != service.wanted:
            self._decided(service, decision.wanted, decision.reason)
            service.wanted = decision.wanted

    def _decided(self, service: Service, wanted: int, reason: str) -> None:
        name = service.function.name
        service.decision = {"at": time.time(), "from": service.wanted, "to": wanted,
                            "reason": reason}
        self.log(f"{name} {service.wanted} \u2192 {wanted}: {reason}", function=name,
                 wanted=wanted, previous=service.wanted, reason=reason)

    def _cpu_percent(self, service: Service, seconds: float) -> float | None:
        """The ready instances' average CPU use over the last `seconds`, in percent
        of one core (each instance and its children: gunicorn's worker)."""
        used, counted = 0.0, 0
        for running in service.live:
            process = running.process.process
            if not running.ready or process is None:
                continue
            try:
                root = psutil.Process(process.pid)
                total = sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(True)))
            except psutil.Error:
                continue
            if running.cpu_seconds is not None:
                used += max(0.0, total - running.cpu_seconds)
                counted += 1
            running.cpu_seconds = total
        return 100 * used / seconds / counted if counted else None

    def log(self, message: str, **fields: object) -> None:
        """One JSON line in logs/platform.log, as a platform's event log has it."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "severity": "INFO", "message": message, **fields})
        self.disk.append("the platform's log", self.logs / "platform.log", line)

    # -- state --
    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "functions": {
                name: {
                    "instances": s.ready,
                    "wanted": s.wanted,
                    "concurrency": s.door.concurrency,
                    "in_flight": s.door.in_flight,
                    "queued": s.door.queued,
                    "restarts": s.restarts,
                    "replaced": s.replaced,
                    "autoscaled": not s.pinned,
                    "kind": s.autoscaler.scaling.kind,
                    "panic": s.panic,
                    "decision": s.decision,
                    "cold_starts": s.started_count,
                    "cold_start_seconds": round(s.cold_starts[-1], 3) if s.cold_starts else None,
                    "cold_start_at": s.cold_start_at,
                    "cold_requests": s.door.rules.cold_requests,
                    "cold_wait_seconds": (None if s.door.rules.cold_wait is None
                                          else round(s.door.rules.cold_wait, 3)),
                    "instance_seconds": round(s.instance_seconds(now), 1),
                    "throttled": s.door.rules.throttled,
                    "wait_bound": s.door.rules.line_timeout,
                    "history": [[round(t, 1), n] for t, n in s.history],
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
