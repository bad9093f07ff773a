"""functions/*/tracing.py: W3C traceparent parsing, OpenTelemetry's samplers as the
SDK reads their variables, and Cloud Logging's trace fields. Pure: no process
(a trace followed through real processes: tests/integration/test_trace_followed.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from brkcoin.layout import FUNCTIONS

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def tracing() -> ModuleType:
    path = FUNCTIONS["worker"].folder / "tracing.py"
    spec = importlib.util.spec_from_file_location("tracing_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_every_function_folder_has_the_same_tracing_module() -> None:
    copies = {name: (FUNCTIONS[name].folder / "tracing.py").read_text()
              for name in ("rng", "hasher", "worker")}
    assert len(set(copies.values())) == 1, "functions/*/tracing.py differ: copy one over the others"


def test_a_valid_traceparent_is_read(tracing) -> None:
    span = tracing.parse(f"00-{TRACE}-{SPAN}-01")
    assert (span.trace_id, span.span_id, span.sampled) == (TRACE, SPAN, True)
    assert tracing.parse(f"00-{TRACE}-{SPAN}-00").sampled is False
    assert tracing.parse(f" 00-{TRACE}-{SPAN}-03 ").sampled is True  # flags: bit 0 only
    # A later version may add fields after a dash; they are ignored.
    assert tracing.parse(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds").trace_id == TRACE
    assert span.traceparent == f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize("header", [
    None, "", "garbage", f"ff-{TRACE}-{SPAN}-01", f"00-{'0' * 32}-{SPAN}-01",
    f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{SPAN}-01", f"00-{TRACE}-{SPAN}-01-x",
    f"00-{TRACE}-{SPAN}-0", f"00-{TRACE[:-1]}-{SPAN}-01", f"cc-{TRACE}-{SPAN}-01x",
    f"00_{TRACE}_{SPAN}_01"])
def test_an_invalid_traceparent_is_no_parent(tracing, header) -> None:
    assert tracing.parse(header) is None


def test_a_child_keeps_the_trace_and_its_sampling_and_has_a_span_of_its_own(tracing) -> None:
    parent = tracing.parse(f"00-{TRACE}-{SPAN}-01")
    child = tracing.start(parent, {})
    assert child.trace_id == TRACE and child.sampled and child.span_id != SPAN
    assert len(child.span_id) == 16 and int(child.span_id, 16)
    unsampled = tracing.start(tracing.parse(f"00-{TRACE}-{SPAN}-00"), {})
    assert not unsampled.sampled  # parentbased: the caller decided


def test_the_samplers_decide_as_the_sdk_reads_them(tracing) -> None:
    sampled = tracing.parse(f"00-{TRACE}-{SPAN}-01")
    root = tracing.start(None, {})
    assert root.sampled and len(root.trace_id) == 32  # parentbased_always_on by default
    assert not tracing.start(None, {"OTEL_TRACES_SAMPLER": "always_off"}).sampled
    assert not tracing.start(sampled, {"OTEL_TRACES_SAMPLER": "always_off"}).sampled
    assert tracing.start(sampled, {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}).sampled
    ratio = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    kept = sum(tracing.start(None, ratio).sampled for _ in range(4000))
    assert 800 < kept < 1200  # a quarter of the traces, by their ids
    assert not tracing.start(None, ratio | {"OTEL_TRACES_SAMPLER_ARG": "0"}).sampled
    for name, arg in (("nonsense", "1"), ("traceidratio", "2"), ("traceidratio", "x")):
        assert tracing.sampler({"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": arg}
                               )[1] in (1.0,)  # bad values: the SDK's defaults


def test_cloud_logging_fields(tracing) -> None:
    span = tracing.Span(TRACE, SPAN, True)
    assert span.log_fields("my-project") == {
        "logging.googleapis.com/trace": f"projects/my-project/traces/{TRACE}",
        "logging.googleapis.com/spanId": SPAN, "logging.googleapis.com/trace_sampled": True}
    assert span.log_fields("")["logging.googleapis.com/trace"] == TRACE


def test_a_server_logs_only_what_its_caller_sampled(tracing, capsys) -> None:
    assert tracing.served([(b"host", b"x")]) is None  # never a trace of its own
    assert tracing.served([(b"traceparent", f"00-{TRACE}-{SPAN}-00".encode())]) is None
    assert tracing.served([(b"traceparent", b"\xff\xfe")]) is None
    span = tracing.served([(b"host", b"x"), (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())])
    assert span.trace_id == TRACE and span.sampled
    tracing.log("rng GET /" + "9" * 1000, span, status=200)
    line = json.loads(capsys.readouterr().out)
    assert line["logging.googleapis.com/trace"] == TRACE and line["status"] == 200
    assert line["severity"] == "INFO" and line["time"].endswith("Z")
    assert len(line["message"]) == 300  # an attacker's long path stays bounded
