"""infra/aws/brkcoin_lambda.py, run as Lambda runs it: the deployment zip unpacked in
a fresh Python process, its handler called with documented event payloads. Its
answers are compared with a real functions-framework process serving the same
function (delays off)."""

from __future__ import annotations

import base64
import hmac
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import redis
from aws_events import function_url_event, scheduled_event
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from deploy_support import NO_DELAYS

from brkcoin.deploy import aws_package
from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import free_port

RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])  # /var/task
import brkcoin_lambda

class Context:
    aws_request_id = "6bc28136-xmpl-4365-b021-0ce6b2e64ab0"
    function_name = "brkcoin"
    memory_limit_in_mb = 256

answers = []
for event in json.load(open(sys.argv[2])):
    try:
        answers.append({"ok": brkcoin_lambda.handler(event, Context())})
    except Exception as e:
        answers.append({"error": type(e).__name__, "message": str(e)})
json.dump(answers, open(sys.argv[3], "w"))
"""

HASH_INPUT = bytes(range(256))[:96]
CASES = {  # name: [(method, path, query, body, how to compare)]
    "rng": [("GET", "/", "", b"", "exact"), ("GET", "/32", "", b"", "length"),
            ("GET", "/zero", "", b"", "exact"), ("POST", "/", "", b"x", "exact")],
    "hasher": [("GET", "/", "", b"", "exact"), ("POST", "/", "", HASH_INPUT[:32], "exact"),
               ("POST", "/", "chunk=32", HASH_INPUT, "exact"),
               ("POST", "/", "chunk=5", HASH_INPUT[:32], "exact")],
    "worker": [("GET", "/", "", b"", "exact"), ("POST", "/", "", b"not json", "exact"),
               ("POST", "/", "", b'{"seconds": 0.2}', "json-keys")],
    "webui": [("GET", "/", "", b"", "exact"), ("GET", "/json", "", b"", "json-keys")],
}


def run_lambda(tmp_path: Path, name: str, env: dict[str, str], events: list) -> list[dict]:
    """Unpack the function's zip (code + adapter; deps come from this venv, as from a
    layer) and feed the events to its handler in a new interpreter."""
    task = tmp_path / f"task-{name}"
    zipfile.ZipFile(io.BytesIO(aws_package.build_zip(FUNCTIONS[name].folder))).extractall(task)
    (tmp_path / "events.json").write_text(json.dumps(events))
    answers = tmp_path / f"answers-{name}.json"
    full_env = {**os.environ, **NO_DELAYS, **env, "FUNCTION_TARGET": name,
                "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(task), str(tmp_path / "events.json"), str(answers)],
        env=full_env, cwd=task, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(answers.read_text())


def from_process(url: str, method: str, path: str, query: str, body: bytes):
    request = urllib.request.Request(url + path + (f"?{query}" if query else ""),
                                     data=body or None, method=method)
    if body:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def from_lambda(answer: dict):
    assert "ok" in answer, answer
    response = answer["ok"]
    headers = {k.lower(): v for k, v in response.get("headers", {}).items()}
    body = response.get("body") or ""
    data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
    return response["statusCode"], headers.get("content-type"), data


@pytest.fixture(scope="module")
def backend_env(function_processes, redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "RNG_URL": function_processes["rng"].url,
            "HASHER_URL": function_processes["hasher"].url,
            "WORKER_URL": function_processes["worker"].url}


@pytest.mark.parametrize("name", list(CASES))
def test_function_url_events_get_the_functions_framework_answer(
    name: str, function_processes, backend_env: dict, tmp_path: Path
) -> None:
    cases = CASES[name]
    events = [function_url_event(method, path, query, body,
                                 {"content-type": "application/octet-stream"} if body else None)
              for method, path, query, body, _ in cases]
    answers = run_lambda(tmp_path, name, backend_env, events)
    for (method, path, query, body, how), answer in zip(cases, answers, strict=True):
        expected = from_process(function_processes[name].url, method, path, query, body)
        got = from_lambda(answer)
        where = f"{name} {method} {path}?{query}"
        assert got[:2] == expected[:2], where  # status and content type
        if how == "exact":
            assert got[2] == expected[2], where
        elif how == "length":
            assert len(got[2]) == len(expected[2]) == int(path.strip("/")), where
        else:  # the same JSON document shape; the numbers differ from run to run
            assert set(json.loads(got[2])) == set(json.loads(expected[2])), where


def test_a_scheduled_event_mines(backend_env: dict, redis_url: str, tmp_path: Path) -> None:
    wallet = redis.Redis.from_url(redis_url)
    before = int(wallet.get("hashes") or 0)
    answers = run_lambda(tmp_path, "worker", {**backend_env, "FUNCTION_EVENT_TARGET":
                                              "worker_event"}, [
        scheduled_event({"seconds": 0.3}),  # inputs from the event's detail
        {"seconds": 0.3},  # the rule target's constant input (what deploy aws sets)
        scheduled_event({"seconds": -1}),  # bad input: answered, not retried
    ])
    assert [a["ok"]["statusCode"] for a in answers] == [200, 200, 400]
    assert "seconds must be" in answers[2]["ok"]["body"]
    assert int(wallet.get("hashes") or 0) > before


def test_an_unrecorded_invocation_is_raised_for_lambda_to_retry(
    backend_env: dict, tmp_path: Path
) -> None:
    env = {**backend_env, "FUNCTION_EVENT_TARGET": "worker_event",
           "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # Redis is down
           "WORKER_FLUSH_GRACE": "0.5"}
    # A whole second of mining: with nothing mined (a slow first call on a busy
    # machine) there would be nothing unrecorded, and the answer a 200.
    [answer] = run_lambda(tmp_path, "worker", env, [scheduled_event({"seconds": 1.0})])
    assert answer.get("error") == "EventFailed" and "503" in answer["message"], answer


def test_http_only_functions_refuse_other_events(backend_env: dict, tmp_path: Path) -> None:
    [answer] = run_lambda(tmp_path, "rng", backend_env, [scheduled_event()])
    assert answer["error"] == "ValueError" and "HTTP events only" in answer["message"]


class SigV4Gate(http.server.ThreadingHTTPServer):
    """Stands in for an AWS_IAM function URL: checks each request's SigV4 signature
    (recomputed with botocore from what arrived), then forwards it to `upstream`."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.upstream, self.valid, self.rejected = upstream, 0, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _GateHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        gate: SigV4Gate = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._signed(body):
            gate.rejected += 1
            self._reply(403, "application/json", b'{"Message": "Forbidden"}')
            return
        gate.valid += 1
        request = urllib.request.Request(gate.upstream + self.path, data=body or None,
                                         method=self.command)
        with urllib.request.urlopen(request, timeout=10) as response:
            self._reply(response.status, response.headers["Content-Type"], response.read())

    do_POST = do_GET  # noqa: N815

    def _signed(self, body: bytes) -> bool:
        header = self.headers.get("Authorization", "")
        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=AKIDBRKCOIN/\d{8}/us-east-1/lambda/"
                             r"aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]+)",
                             header)
        if not match or self.headers.get("X-Amz-Security-Token") != "SESSIONTOKEN":
            return False
        signed = match.group(1).split(";")
        request = AWSRequest(method=self.command, url=f"http://{self.headers['Host']}{self.path}",
                             data=body, headers={h: self.headers[h] for h in signed})
        request.context["timestamp"] = self.headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials("AKIDBRKCOIN", "SECRET", "SESSIONTOKEN"), "lambda",
                           "us-east-1")
        string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
        return hmac.compare_digest(signer.signature(string_to_sign, request), match.group(2))

    def _reply(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize("signing", [True, False], ids=["signed", "unsigned"])
def test_the_worker_signs_its_calls_to_aws_iam_urls(
    signing: bool, function_processes, redis_url: str, tmp_path: Path
) -> None:
    gates = {name: SigV4Gate(function_processes[name].url) for name in ("rng", "hasher")}
    for gate in gates.values():
        threading.Thread(target=gate.serve_forever, daemon=True).start()
    try:
        env = {"FUNCTION_EVENT_TARGET": "worker_event", "REDIS_URL": redis_url,
               "RNG_URL": gates["rng"].url, "HASHER_URL": gates["hasher"].url,
               # what the Lambda runtime gives a function: its role's credentials
               "AWS_ACCESS_KEY_ID": "AKIDBRKCOIN", "AWS_SECRET_ACCESS_KEY": "SECRET",
               "AWS_SESSION_TOKEN": "SESSIONTOKEN", "AWS_REGION": "us-east-1",
               "UPSTREAM_AUTH": "aws-sigv4" if signing else ""}
        # A whole second: on a busy machine 0.3 s can end before the first call.
        [answer] = run_lambda(tmp_path, "worker", env, [{"seconds": 1.0}])
        assert answer["ok"]["statusCode"] == 200
        if signing:
            assert all(g.valid > 0 and g.rejected == 0 for g in gates.values())
        else:  # refused at rng already, so the worker never gets to hasher
            assert gates["rng"].rejected > 0
            assert all(g.valid == 0 for g in gates.values())
    finally:
        for gate in gates.values():
            gate.shutdown()
            gate.server_close()


@pytest.mark.parametrize("signing", [True, False], ids=["signed", "unsigned"])
def test_the_web_ui_signs_its_probes_of_aws_iam_urls(
    signing: bool, function_processes, redis_url: str, tmp_path: Path
) -> None:
    names = ("rng", "hasher", "worker")
    gates = {name: SigV4Gate(function_processes[name].url) for name in names}
    for gate in gates.values():
        threading.Thread(target=gate.serve_forever, daemon=True).start()
    try:
        env = {"REDIS_URL": redis_url, "AWS_ACCESS_KEY_ID": "AKIDBRKCOIN",
               "AWS_SECRET_ACCESS_KEY": "SECRET", "AWS_SESSION_TOKEN": "SESSIONTOKEN",
               "AWS_REGION": "us-east-1", "UPSTREAM_AUTH": "aws-sigv4" if signing else "",
               **{f"{name.upper()}_URL": gates[name].url for name in names}}
        [answer] = run_lambda(tmp_path, "webui", env, [function_url_event("GET", "/health")])
        status, _, body = from_lambda(answer)
        assert status == 200
        probes = json.loads(body)["functions"]
        if signing:
            assert all(probes[n]["up"] for n in names), probes
            assert all(g.valid == 1 and g.rejected == 0 for g in gates.values())
        else:
            assert [probes[n]["detail"] for n in names] == ["HTTP 403"] * 3
            assert all(g.rejected == 1 and g.valid == 0 for g in gates.values())
    finally:
        for gate in gates.values():
            gate.shutdown()
            gate.server_close()
