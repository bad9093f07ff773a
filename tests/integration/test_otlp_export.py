"""Spans exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set: one tick
followed through the exported spans, from the scheduler to the worker's invocation
to rng and hasher.

The receiver is a stand-in for an OpenTelemetry collector (none runs here): a
loopback HTTP server that takes POST /v1/traces, decodes the protobuf request with
opentelemetry-proto (the collector's own message types) and answers 200."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from brkcoin.platform.processes import free_port


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver(ThreadingHTTPServer):
    """The stand-in collector: every span it was sent."""

    spans: list[Exported]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.server.spans.append(Exported(
                        service, span.name, span.trace_id.hex(), span.span_id.hex(),
                        span.parent_span_id.hex()))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", free_port()), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_tick_is_followed_through_the_exported_spans(up, receiver: Receiver) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    stack = up(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"})
    stack.wait_for("brkcoin is up")

    def followed() -> dict[str, list[Exported]] | None:
        """A tick whose worker invocation and rng and hasher calls are all in."""
        spans = list(receiver.spans)
        for tick in (s for s in spans if s.service == "scheduler"):
            invocations = [s for s in spans if s.service == "worker"
                           and s.parent_id == tick.span_id]
            for invocation in invocations:
                calls = {name: [s for s in spans if s.service == name
                                and s.parent_id == invocation.span_id]
                         for name in ("rng", "hasher")}
                if all(calls.values()):
                    return {"tick": [tick], "worker": [invocation], **calls}
        return None

    give_up = time.monotonic() + 40
    while (found := followed()) is None:
        assert time.monotonic() < give_up, (receiver.spans[-10:], stack.output)
        time.sleep(0.3)
    trace = found["tick"][0].trace_id
    assert all(s.trace_id == trace for spans in found.values() for s in spans)
    assert found["tick"][0].parent_id == ""  # the root
    assert found["worker"][0].name == "invocation"
    assert {s.name for s in found["rng"]} == {"GET /{n}"}
    assert {s.name for s in found["hasher"]} == {"POST /"}
    # The same trace and spans in the log lines Cloud Logging would read.
    logs = stack.data_dir / "logs"
    worker_lines = "".join(p.read_text() for p in logs.glob("worker-*.log"))
    assert f'"logging.googleapis.com/trace": "{trace}"' in worker_lines
    assert f'"logging.googleapis.com/spanId": "{found["worker"][0].span_id}"' in worker_lines
    rng_lines = "".join(p.read_text() for p in logs.glob("rng-*.log"))
    assert f'"logging.googleapis.com/spanId": "{found["rng"][0].span_id}"' in rng_lines
