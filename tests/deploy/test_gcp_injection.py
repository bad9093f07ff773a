"""Hostile values in every option of `brkcoin deploy gcp` and `destroy gcp`.

Each value carries shell metacharacters and a command that would create a file.
Either the option is refused up front (exit 2, a message naming it, nothing
printed), or the printed script parses (`bash -n`) and, run for real by bash
against the stand-in gcloud of fake_gcloud.py (the real one cannot run here),
creates nothing and hands the value to gcloud byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_gcloud import FakeGcloud, expected_calls

from brkcoin.cli import build_parser
from brkcoin.cli import main as brkcoin
from brkcoin.deploy import gcp, rules
from brkcoin.deploy.plan import Plan, show
from brkcoin.deploy.shell import Command, Each, Step, items_of, join, shell_word

PAYLOADS = {  # {marker} is replaced by the path of a file that must never appear
    "dollar-paren": "$(touch {marker})",
    "backticks": "`touch {marker}`",
    "semicolon": ";touch {marker};",
    "single-quote": "';touch {marker};'",
    "double-quote": '";touch {marker};"',
    "backslash": "\\';touch {marker};\\",
    "newline": "\ntouch {marker}\n",
    "carriage-return": "\rtouch {marker}\r",
    "escape": "\x1b]0;touch {marker}\x07",
    "line-separator": "\u2028touch {marker}",
    "braces": "${A}$(touch {marker})",  # the form that once switched to double quotes
}
VALID = {  # a good value of every option that takes one; the payload is appended
    "--project": "my-project",
    "--region": "europe-west1",
    "--prefix": "brkcoin",
    "--network": "shared",
    "--subnet": "shared-ew1",
    "--range": "10.8.0.0/24",
    "--schedule": "* * * * *",
    "--seconds": "55",
    "--backend-access": "iam",
    "--base-image": "python312",
}
REQUIRED = {"--project": "my-project", "--region": "europe-west1"}
TOGETHER = {"--network": "shared", "--subnet": "shared-ew1"}


def hostile(payload: str, tmp_path: Path) -> tuple[str, Path]:
    marker = tmp_path / "pwned"
    return payload.replace("{marker}", str(marker)), marker


def dry_run(verb: str, options: dict[str, str]) -> tuple[list[str], int]:
    argv = [verb, "gcp", "--dry-run", *(word for item in options.items() for word in item)]
    try:
        return argv, brkcoin(argv)
    except SystemExit as e:  # argparse refuses what --seconds and --backend-access can't be
        return argv, e.code if isinstance(e.code, int) else 1


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize("option", VALID)
@pytest.mark.parametrize("verb", ["deploy", "destroy"])
def test_every_option_refuses_or_passes_the_value_intact(
        verb: str, option: str, payload: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    text, marker = hostile(payload, tmp_path)
    value = VALID[option] + text
    together = TOGETHER if option in TOGETHER else {}
    argv, code = dry_run(verb, {**REQUIRED, **together, option: value})
    out, err = capsys.readouterr()
    if code != 0:  # (a) refused: exit 2, a clear line naming the option, no script
        assert code == 2 and out == "" and "Traceback" not in err
        if "usage:" in err:  # argparse's own refusal of a number or a choice
            assert f"argument {option}: invalid" in err.splitlines()[-1]
        else:
            assert err.startswith(f"brkcoin {verb} gcp: {option} ") and err.count("\n") == 1
        return
    # (b) accepted: bash parses the script, and running it runs nothing of the value.
    exists = verb == "destroy"  # so that the deletions run too
    fake = FakeGcloud.install(tmp_path)
    calls = fake.run_script(out, exists)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "gcloud.log", "plan.sh"]
    args = build_parser().parse_args(argv)
    plan = gcp.deploy_plan(args) if verb == "deploy" else gcp.destroy_plan(args)
    assert calls == expected_calls(plan.operations, exists)
    if verb == "deploy":  # destroy has no use for the deploy-only options
        assert any(value in word for call in calls for word in call)


@pytest.mark.parametrize("variable", ["GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_REGION"])
def test_defaults_from_the_environment_are_checked_too(
        variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    text, marker = hostile(PAYLOADS["braces"], tmp_path)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    monkeypatch.setenv("GOOGLE_CLOUD_REGION", "europe-west1")
    monkeypatch.setenv(variable, "my-project" + text)
    assert brkcoin(["deploy", "gcp", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    option = "--project" if variable.endswith("PROJECT") else "--region"
    assert out == "" and err.startswith(f"brkcoin deploy gcp: {option} ")


@pytest.mark.parametrize("option, value, message", [
    ("--network", "Shared", "is not a resource name"),
    ("--network", "a" * 64, "is not a resource name"),
    ("--range", "10.8.0.1/24", "is not an IPv4 range"),  # host bits set
    ("--range", "10.8.0.0", "is not an IPv4 range"),
    ("--range", "10.8.0.0/30", "is not an IPv4 range"),
    ("--range", "10.8.0.0/255.255.255.0", "is not an IPv4 range"),
    ("--schedule", "* * * *", "is not a five-field cron schedule"),
    ("--schedule", "* * * * * *", "is not a five-field cron schedule"),
    ("--schedule", "61 * * * *", "is not a five-field cron schedule"),
    ("--schedule", "*\t* * * *", "is not printable text"),
    ("--project", "demo", "is not a project id"),  # 6 to 30
    ("--prefix", "a", "is not a name prefix"),  # a-rng: a service account id is 6 to 30
    ("--base-image", "Python312", "is not an image"),
])
def test_values_of_a_known_shape_are_checked(
        option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    together = TOGETHER if option in TOGETHER else {}
    assert dry_run("deploy", {**REQUIRED, **together, option: value})[1] == 2
    assert f"{option} {value!r} {message}" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--network", "shared-vpc-1"), ("--range", "192.168.16.0/20"),
    ("--schedule", "*/5 9-17 * JAN-MAR MON-FRI"), ("--schedule", "0 0  1,15 * *"),
])
def test_good_values_are_taken(option: str, value: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    together = TOGETHER if option in TOGETHER else {}
    assert dry_run("deploy", {**REQUIRED, **together, option: value})[1] == 0
    assert shell_word(f"{option}={value}") in capsys.readouterr().out


@pytest.mark.parametrize("exists", [False, True], ids=["fresh", "again"])
def test_quoting_holds_for_any_text_and_any_captured_value(tmp_path: Path,
                                                           exists: bool) -> None:
    """Below the checks: every payload as a whole argument and run together with a
    variable, in every kind of step; gcloud's own output holds them too, and is used
    as data, never parsed again."""
    texts = [hostile(payload, tmp_path)[0] for payload in PAYLOADS.values()]
    host = gcp.REDIS_HOST
    words: Command = (*texts, join("--x=", host, texts[0]), join(texts[-1], host), "", "-")
    steps = [
        Step(texts[0], ("gcloud", "redis", "instances", "describe", "w",
                        "--format=value(host)"), capture=host),
        Step(texts[1], ("gcloud", "run", "deploy", *words)),
        Step(texts[2], ("gcloud", "x", "delete", *words),
             check=("gcloud", "x", "describe", *words), only_if_exists=True),
        Step(texts[3], ("gcloud", "x", "create", *words),
             check=("gcloud", "x", "describe", *words)),
        Step(texts[6], ("gcloud", "x", "create", *words),
             check=("gcloud", "x", "describe", *words),
             if_exists=("gcloud", "x", "update", *words)),
        Step(texts[5], ("gcloud", "scheduler", "jobs", "list"), capture=gcp.STALE_JOBS,
             may_be_empty=True),
        Each(texts[7], gcp.STALE_JOBS, gcp.JOB, ("gcloud", "x", "delete", gcp.JOB, *words)),
    ]
    printed_host = "10.0.0.3" + "".join(texts)
    jobs = "*\n" + "\n".join(texts)  # listed items: each is split off, never expanded
    fake = FakeGcloud.install(tmp_path)
    script = show(Plan(texts[-1], tuple(steps), (texts[4],)))  # hostile descriptions too
    calls = fake.run_script(script, exists, host=printed_host, jobs=jobs)
    assert not (tmp_path / "pwned").exists()
    assert calls == expected_calls(steps, exists, host=printed_host, jobs=jobs)
    assert calls[-len(items_of(jobs))][:3] == ["x", "delete", "*"]  # not the files here
    assert ["run", "deploy", *texts, f"--x={printed_host}{texts[0]}",
            texts[-1] + printed_host, "", "-"] in calls


def test_deploy_without_a_shell_passes_values_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real run (no --dry-run) puts in only the plan's own variables, too (below
    the checks: --base-image taken as any printable text)."""
    monkeypatch.setitem(gcp.OPTION_RULES, "base_image", rules.TEXT)
    text, marker = hostile("${REDIS_HOST}" + PAYLOADS["braces"], tmp_path)
    fake = FakeGcloud.install(tmp_path)
    for name, setting in fake.env().items():
        monkeypatch.setenv(name, setting)
    argv = ["deploy", "gcp", *(w for item in REQUIRED.items() for w in item),
            "--base-image", "python312" + text]
    assert brkcoin(argv) == 0
    assert not marker.exists()
    calls = fake.calls()
    plan = gcp.deploy_plan(build_parser().parse_args(argv))
    assert calls[1:] == expected_calls(plan.operations, False)
    assert sum(f"--base-image=python312{text}" in call for call in calls) == 4
