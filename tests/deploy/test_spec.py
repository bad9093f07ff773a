"""The spec (brkcoin.layout) against the function code: the defaults every target
gives a function are the ones its code uses when the variable is unset, and the
code's local URLs are the spec's ports. Each function is imported in a fresh
interpreter with an empty environment, as a platform would start it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from brkcoin.layout import FUNCTIONS, MAX_WORKERS, WORKER_EVENT, Function, url_variable

# Where each function keeps the default of a setting the spec names: (folder's
# module, expression in it). A setting added to the spec needs its line here.
CODE = {
    "RNG_DELAY": ("rng", "main", "DELAY"),
    "HASHER_DELAY": ("hasher", "main", "DELAY"),
    "WORKER_DELAY": ("worker", "settings", "Settings.from_env({}).delay"),
}
LOCAL_URLS = {  # the code's default URL of each function it calls
    ("worker", "RNG_URL"): ("settings", "Settings.from_env({}).rng_url"),
    ("worker", "HASHER_URL"): ("settings", "Settings.from_env({}).hasher_url"),
    ("webui", "RNG_URL"): ("main", "'http://%s:%d' % FUNCTIONS['rng'][:2]"),
    ("webui", "HASHER_URL"): ("main", "'http://%s:%d' % FUNCTIONS['hasher'][:2]"),
    ("webui", "WORKER_URL"): ("main", "'http://%s:%d' % FUNCTIONS['worker'][:2]"),
}
READ = "import json, sys; module = __import__(sys.argv[1]); print(json.dumps(eval(sys.argv[2], " \
       "vars(module))))"


def code_value(function: Function, module: str, expression: str) -> object:
    result = subprocess.run([sys.executable, "-c", READ, module, expression],
                            cwd=function.folder, env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_setting_of_the_spec_is_checked() -> None:
    named = {key for f in FUNCTIONS.values() for key in f.defaults}
    assert named == set(CODE)
    assert {(n, url_variable(need)) for n, f in FUNCTIONS.items()
            for need in f.needs if need != "redis"} == set(LOCAL_URLS)


@pytest.mark.parametrize("variable", CODE)
def test_the_spec_defaults_are_the_code_defaults(variable: str) -> None:
    name, module, expression = CODE[variable]
    function = FUNCTIONS[name]
    assert float(function.defaults[variable]) == code_value(function, module, expression)


@pytest.mark.parametrize("caller, variable", LOCAL_URLS)
def test_the_code_calls_the_spec_ports_locally(caller: str, variable: str) -> None:
    module, expression = LOCAL_URLS[(caller, variable)]
    callee = FUNCTIONS[variable.removesuffix("_URL").lower()]
    url = code_value(FUNCTIONS[caller], module, expression)
    assert str(url).rstrip("/") == f"http://127.0.0.1:{callee.port}"


def test_the_spec_reads_as_the_targets_need() -> None:
    assert [n for n, f in FUNCTIONS.items() if f.public] == ["webui"]
    assert FUNCTIONS["webui"].wiring == ("REDIS_URL", "RNG_URL", "HASHER_URL", "WORKER_URL")
    assert FUNCTIONS["worker"].wiring == ("REDIS_URL", "RNG_URL", "HASHER_URL")
    assert FUNCTIONS["worker"].command(8080) == [
        "functions-framework", "--target", "worker", "--source", "functions/worker/main.py",
        "--port", "8080"]
    assert WORKER_EVENT.command()[2] == "worker_event"
    assert WORKER_EVENT.folder == FUNCTIONS["worker"].folder
    worker = FUNCTIONS["worker"]
    assert worker.timeout_for(0) == worker.timeout and worker.timeout_for(300) == 360
    assert MAX_WORKERS == worker.concurrency * worker.max_instances
