"""Hostile text in every option of every target's `deploy` and `destroy`, the
options found in the parsers themselves (a new one is covered, or this fails).

A control character (a newline, a carriage return, an escape...) is refused up
front: exit 2, one line naming the option, no plan. Shell metacharacters are
refused, or the printed plan parses (`bash -n`) and, run by bash as printed with
stand-in docker, kubectl and gcloud on PATH, runs nothing of the value: the
CANARY file it would touch never appears. Below the checks, a plan of AWS calls
holding any text is one comment line per line all the same."""

from __future__ import annotations

import argparse
import functools
import subprocess
from pathlib import Path

import pytest

from brkcoin.cli import build_parser
from brkcoin.cli import main as brkcoin
from brkcoin.deploy.aws_calls import Call, Calls, Ensure, Prune, Session
from brkcoin.deploy.cli import TARGETS
from brkcoin.deploy.plan import Plan, Var, show

CANARY = "CANARY"  # touched in the folder the plan runs in, if anything of a value runs
CONTROL = {
    "newline": f"\ntouch {CANARY}\n",
    "carriage-return": f"\rtouch {CANARY}\r",
    "crlf": f"\r\ntouch {CANARY}\r\n",
    "escape": f"\x1b[2K\x1b]0;touch {CANARY}\x07",
    "tab": f"\ttouch {CANARY}",
    "form-feed": f"\x0b\x0ctouch {CANARY}",
    "next-line": f"\x85touch {CANARY}",
    "line-separator": f"\u2028touch {CANARY}",
}
SHELL = {
    "dollar-paren": f"$(touch {CANARY})",
    "backticks": f"`touch {CANARY}`",
    "semicolon": f";touch {CANARY};",
    "quotes": f"';touch {CANARY};'\";touch {CANARY};\"",
}
VALID = {  # a good value of every option that takes one; the payload is appended
    "compose": {"--project": "brkcoin", "--registry": "ghcr.io/me", "--tag": "v1",
                "--workers": "3"},
    "k8s": {"--variant": "knative", "--registry": "ghcr.io/me", "--tag": "v1",
            "--context": "kind-brkcoin", "--out": "out.yaml", "--workers": "3"},
    "aws": {"--endpoint-url": "http://127.0.0.1:4566", "--region": "us-east-1",
            "--prefix": "brkcoin", "--redis-url": "redis://wallet:6379/0",
            "--schedule": "rate(1 minute)", "--seconds": "55", "--workers": "3",
            "--layer": "arn:aws:lambda:us-east-1:123456789012:layer:deps:1"},
    "gcp": {"--project": "my-project", "--region": "europe-west1", "--prefix": "brkcoin",
            "--network": "shared", "--subnet": "shared-ew1", "--range": "10.8.0.0/24",
            "--schedule": "* * * * *", "--seconds": "55", "--backend-access": "iam",
            "--base-image": "python312", "--workers": "3"},
}
REQUIRED = {"aws": ["--redis-url"], "gcp": ["--project", "--region"]}
TOGETHER = {"--network": "--subnet", "--subnet": "--network"}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@functools.cache
def options(verb: str, target: str) -> tuple[str, ...]:
    """The options of `brkcoin VERB TARGET` that take a value."""
    parser = _subparser(_subparser(build_parser(), verb), target)
    return tuple(a.option_strings[-1] for a in parser._actions
                 if a.option_strings and a.nargs != 0)


CASES = [(verb, target, option) for verb in ("deploy", "destroy") for target in TARGETS
         for option in options(verb, target)]


def dry_run(verb: str, target: str, option: str, value: str) -> int:
    known = options(verb, target)
    given = {o: VALID[target][o] for o in (*REQUIRED.get(target, []), TOGETHER.get(option, ""))
             if o in known}
    argv = [verb, target, "--dry-run",
            *(word for item in {**given, option: value}.items() for word in item)]
    try:
        return brkcoin(argv)
    except SystemExit as e:  # argparse refuses what a number or a choice can't be
        return e.code if isinstance(e.code, int) else 1


def refused(code: int, out: str, err: str, verb: str, target: str, option: str) -> bool:
    """Refused as it should be (exit 2, a clear line naming the option, no plan)."""
    if code == 0:
        return False
    assert code == 2 and out == "" and "Traceback" not in err
    last = err.splitlines()[-1]
    if "usage:" in err:  # argparse's own refusal of a number or a choice
        assert f"argument {option}: invalid" in last
    else:
        assert err.startswith(f"brkcoin {verb} {target}: {option} ") and err.count("\n") == 1
    return True


def run_as_printed(script: str, folder: Path) -> None:
    """Save the plan, check bash parses it, run it with stand-ins for the tools."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kubectl", "gcloud"):
        (bin_dir / tool).write_text("#!/bin/sh\necho stand-in\n")
        (bin_dir / tool).chmod(0o755)
    (folder / "plan.sh").write_text(script)
    subprocess.run(["bash", "-n", "plan.sh"], cwd=folder, check=True, timeout=30)
    subprocess.run(["bash", "plan.sh"], cwd=folder, env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                   capture_output=True, timeout=60, check=False)
    assert not (folder / CANARY).exists()


@pytest.mark.parametrize("payload", CONTROL.values(), ids=CONTROL.keys())
@pytest.mark.parametrize("verb, target, option", CASES)
def test_a_control_character_is_refused(verb: str, target: str, option: str, payload: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = dry_run(verb, target, option, VALID[target][option] + payload)
    out, err = capsys.readouterr()
    assert refused(code, out, err, verb, target, option), out


@pytest.mark.parametrize("payload", SHELL.values(), ids=SHELL.keys())
@pytest.mark.parametrize("verb, target, option", CASES)
def test_shell_text_is_refused_or_runs_nothing(verb: str, target: str, option: str,
                                               payload: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = dry_run(verb, target, option, VALID[target][option] + payload)
    out, err = capsys.readouterr()
    if not refused(code, out, err, verb, target, option):
        run_as_printed(out, tmp_path)


@pytest.mark.parametrize("variable, option", [
    ("AWS_ENDPOINT_URL", "--endpoint-url"), ("AWS_REGION", "--region"),
    ("REDIS_URL", "--redis-url")])
def test_aws_defaults_from_the_environment_are_checked_too(
        variable: str, option: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv(variable, VALID["aws"][option] + CONTROL["newline"])
    argv = ["deploy", "aws", "--dry-run"]
    assert brkcoin(argv + ([] if variable == "REDIS_URL" else
                           ["--redis-url", VALID["aws"]["--redis-url"]])) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"brkcoin deploy aws: {option} ")


def test_the_crafted_prefix_of_the_report_runs_nothing(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """`brkcoin deploy aws --dry-run --prefix=$'x\\ntouch CANARY\\n'`, as found: had it
    printed a plan, that plan ran `touch CANARY`."""
    code = brkcoin(["deploy", "aws", "--dry-run", "--redis-url", "redis://wallet:6379/0",
                    f"--prefix=x\ntouch {CANARY}\n"])
    out, err = capsys.readouterr()
    if out:
        run_as_printed(out, tmp_path)
    assert code == 2 and out == ""
    assert err == ("brkcoin deploy aws: --prefix 'x\\ntouch CANARY\\n' is not a name prefix: "
                   "letters, digits, hyphens and underscores, at most 49 (AWS names are at "
                   "most 64)\n")


def test_aws_calls_with_any_text_stay_comments(tmp_path: Path) -> None:
    """Below the checks: every kind of AWS operation, hostile text in every place it
    shows one (descriptions, arguments, kept names, the title and notes)."""
    texts = [*CONTROL.values(), *SHELL.values()]
    session = Session("http://127.0.0.1:1", False, "us-east-1")
    rule, rules = Var("RULE"), Var("RULES")
    hostile = {f"Key{n}": text for n, text in enumerate(texts)}
    calls = (Call("lambda", "get_function", hostile), Call("events", "put_rule", hostile,
                                                          capture=(rule, ("RuleArn",))))
    operations = (
        Calls(texts[0], calls, session),
        Ensure(texts[1], calls[0], calls, calls, session),
        Prune(texts[2], Call("events", "list_rules", hostile, capture=(rules, ("Rules",))),
              rule, frozenset(texts), calls, session),
    )
    script = show(Plan(texts[3], operations, tuple(texts)))
    assert all(line.startswith("#") for line in script.splitlines())
    run_as_printed(script, tmp_path)
