"""W3C trace context (`traceparent`) and the trace fields of Cloud Logging's JSON
lines. The same file in every function folder (each folder deploys alone).

A trace runs from the scheduler's tick through the worker's invocation to each
rng and hasher call. Whether it is sampled is decided once, where it starts, as
OpenTelemetry's samplers decide (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`;
the SDK's default, parentbased_always_on), and travels in the trace flags: rng
and hasher log a line only for a sampled call, so untraced traffic pays one
header lookup and no line.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set,
the spans are also the OpenTelemetry SDK's, exported over OTLP/HTTP in batches
(the SDK reads its own variables: sampler, service name, headers). Without it
the SDK is never imported: no export, no cost.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_HEADER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
PROJECT = os.environ.get("GOOGLE_CLOUD_PROJECT", "")  # for Cloud Logging's trace field
# trace-flags with the sampled bit, where every version keeps them (bytes 53-54)
SAMPLED_FLAGS = frozenset(b"%02x" % n for n in range(256) if n & 1)
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


EXPORTING = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                 or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@dataclass(frozen=True)
class Span:
    """A span's context: what a traceparent carries; when exporting, with the
    SDK's span, which end() ends (and so exports)."""

    trace_id: str
    span_id: str
    sampled: bool
    recording: Any = field(default=None, compare=False, repr=False)

    def end(self) -> None:
        if self.recording is not None:
            self.recording.end()

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> Span:
        """A span of the same trace, under this one."""
        return Span(self.trace_id, new_span_id(), self.sampled)

    def log_fields(self, project: str = "") -> dict[str, object]:
        """Cloud Logging's special fields: its trace view groups lines by them."""
        trace = f"projects/{project}/traces/{self.trace_id}" if project else self.trace_id
        return {"logging.googleapis.com/trace": trace,
                "logging.googleapis.com/spanId": self.span_id,
                "logging.googleapis.com/trace_sampled": self.sampled}


def new_span_id() -> str:
    while (span_id := os.urandom(8).hex()) == _ZERO_SPAN:
        pass
    return span_id


def parse(header: str | None) -> Span | None:
    """The caller's span from a traceparent header; None when absent or invalid
    (the W3C rules: version ff, an all-zero id, or a version 00 header with
    anything after its four fields)."""
    if not header:
        return None
    found = _HEADER.match(header.strip())
    if found is None:
        return None
    version, trace_id, span_id, flags = found.groups()
    rest = header.strip()[found.end():]
    if (version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN
            or (version == "00" and rest) or (rest and not rest.startswith("-"))):
        return None
    return Span(trace_id, span_id, bool(int(flags, 16) & 1))


def sampler(env: Mapping[str, str] = os.environ) -> tuple[str, float]:
    """(name, ratio) as the OpenTelemetry SDK reads them; an unknown sampler or a
    bad ratio falls back to the SDK's defaults, as the SDK does."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        name = "parentbased_always_on"
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        ratio = 1.0
    return name, ratio if 0.0 <= ratio <= 1.0 else 1.0


SAMPLER = sampler()  # read once: a process's environment is set when it starts


def start(parent: Span | None, env: Mapping[str, str] | None = None, *,
          name: str = "", service: str = "") -> Span:
    """This service's span: a child of `parent` (the caller's), or the root of a
    new trace; sampled as the configured sampler (SAMPLER, or `env`'s) decides.
    When exporting, the SDK's span `name` of `service`, with the SDK's ids."""
    if EXPORTING and env is None:
        return _exported(parent, name, service)
    name, ratio = SAMPLER if env is None else sampler(env)
    trace_id = parent.trace_id if parent else os.urandom(16).hex()
    if parent is not None and name.startswith("parentbased_"):
        sampled = parent.sampled
    elif name.endswith("always_on"):
        sampled = True
    elif name.endswith("always_off"):
        sampled = False
    else:  # traceidratio: the trace id's low 8 bytes, as the SDK compares them
        sampled = int(trace_id[16:], 16) < ratio * 2**64
    return Span(trace_id, new_span_id(), sampled)


def served(headers: list[tuple[bytes, bytes]], name: str = "",
           service: str = "") -> Span | None:
    """A server's span for a request (its ASGI scope's headers) whose caller
    sampled it; None otherwise: rng and hasher never start a trace of their own."""
    for header, value in headers:
        if header == b"traceparent":
            if value[53:55] not in SAMPLED_FLAGS:  # most calls: not sampled, done
                return None
            caller = parse(value.decode("latin-1"))
            span = start(caller, name=name, service=service) if caller is not None else None
            return span if span is not None and span.sampled else None
    return None


_tracers: dict[str, Any] = {}


def _exported(parent: Span | None, name: str, service: str) -> Span:
    """A span of the OpenTelemetry SDK (imported here, only when exporting), its
    parent the caller's, its ids and sampling the SDK's."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    context = None
    if parent is not None:
        context = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else 0))))
    recording = _tracer(service).start_span(name or service, context=context,
                                             kind=SpanKind.SERVER)
    own = recording.get_span_context()
    return Span(f"{own.trace_id:032x}", f"{own.span_id:016x}", own.trace_flags.sampled,
                recording)


def _tracer(service: str) -> Any:
    """One provider and batch exporter a process (per service name): the SDK reads
    OTEL_TRACES_SAMPLER and the exporter's variables; OTEL_SERVICE_NAME, when
    set, names the service instead."""
    if service not in _tracers:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _tracers[service] = provider.get_tracer("brkcoin")
    return _tracers[service]


def log(message: str, span: Span, **fields: object) -> None:
    """One JSON line as Cloud Logging reads it, in `span`'s trace; a line that
    cannot be written (a full disk) never fails the request."""
    when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        print(json.dumps({"severity": "INFO", "time": when, "message": message[:300],
                          **span.log_fields(PROJECT), **fields}), flush=True)
    except (OSError, ValueError):  # ValueError: stdout closed
        pass
