"""The one deploy interface (brkcoin.deploy.plan, shell): a plan of every kind of
command operation, printed and run by bash, then carried out by brkcoin itself,
against a stand-in tool that logs what it was given (argv, input, environment):
both make exactly the same calls. And every target prints its plan in the same
format, as bash that parses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from brkcoin.cli import main as brkcoin
from brkcoin.deploy.common import DeployError
from brkcoin.deploy.plan import Plan, Var, carry_out, run, show
from brkcoin.deploy.shell import Each, Step, WriteFile, join

TOOL = """#!{python} -S
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if args[0] == "stdin" else ""
with open(os.environ["TOOL_LOG"], "a") as log:
    log.write(json.dumps([args, stdin, os.environ.get("COLOUR", "")]) + "\\n")
if args[0] == "print":
    print(*args[1:])
elif args[0] == "exists":
    sys.exit(0 if args[1] == "yes" else 1)
elif args[0] == "fail":
    sys.exit(3)
"""
HOSTILE = "$(touch pwned) `touch pwned` ';touch pwned;' \"x\" \\ \n end"
ITEMS, ITEM, VALUE = Var("ITEMS"), Var("ITEM"), Var("VALUE")


def operations(tmp_path: Path) -> tuple:
    return (
        Step("a plain command", ("tool", "plain", HOSTILE, "")),
        Step("with an environment", ("tool", "env"), env=(("COLOUR", "blue " + HOSTILE),)),
        Step("with an input", ("tool", "stdin"), stdin=f"line 1\n{HOSTILE}\nlast\n"),
        Step("capture a value", ("tool", "print", "v-1"), capture=VALUE),
        Step("use it", ("tool", "use", join("--x=", VALUE, "/"), VALUE)),
        Step("create unless it exists", ("tool", "create", "a"), check=("tool", "exists", "no")),
        Step("skip what exists", ("tool", "create", "b"), check=("tool", "exists", "yes")),
        Step("update what exists", ("tool", "create", "c"), check=("tool", "exists", "yes"),
             if_exists=("tool", "update", "c")),
        Step("delete what exists", ("tool", "delete", "d"), check=("tool", "exists", "yes"),
             only_if_exists=True),
        Step("no deletion of what is not", ("tool", "delete", "e"),
             check=("tool", "exists", "no"), only_if_exists=True),
        Step("list", ("tool", "print", "one", "two"), capture=ITEMS, may_be_empty=True),
        Each("each of them", ITEMS, ITEM, ("tool", "item", ITEM, VALUE)),
        WriteFile("a file", tmp_path / "out dir" / "file.yaml", f"a: 1\n{HOSTILE}\n"),
    )


def install_tool(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tool").write_text(TOOL.format(python=sys.executable))
    (bin_dir / "tool").chmod(0o755)
    (tmp_path / "out dir").mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "TOOL_LOG": str(tmp_path / "tool.log")}


def logged(tmp_path: Path) -> list:
    log = tmp_path / "tool.log"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return calls


def test_printed_and_carried_out_plans_make_the_same_calls(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    env = install_tool(tmp_path)
    plan = Plan("brkcoin test", operations(tmp_path), ("a note",))
    script = tmp_path / "plan.sh"  # saved and run as the README says
    script.write_text(show(plan))
    subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", "-e", str(script)], env=env, cwd=tmp_path, check=True)
    by_bash, written = logged(tmp_path), (tmp_path / "out dir" / "file.yaml").read_text()
    (tmp_path / "out dir" / "file.yaml").unlink()

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    values = carry_out(plan)
    by_brkcoin = logged(tmp_path)

    assert by_bash == by_brkcoin
    assert written == (tmp_path / "out dir" / "file.yaml").read_text() == f"a: 1\n{HOSTILE}\n"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert values == {"VALUE": "v-1", "ITEMS": "one two"}
    calls = [args for args, _, _ in by_brkcoin]
    assert ["plain", HOSTILE, ""] in calls and ["use", "--x=v-1/", "v-1"] in calls
    assert [["item", "one", "v-1"], ["item", "two", "v-1"]] == [c for c in calls
                                                                if c[0] == "item"]
    assert ["create", "a"] in calls and ["create", "b"] not in calls
    assert ["update", "c"] in calls and ["delete", "d"] in calls and ["delete", "e"] not in calls
    assert [["stdin"], f"line 1\n{HOSTILE}\nlast\n", ""] in by_brkcoin
    assert [["env"], "", "blue " + HOSTILE] in by_brkcoin
    out = capsys.readouterr().out
    assert f"[1/{len(plan.operations)}] a plain command" in out


def test_the_printed_format(tmp_path: Path) -> None:
    plan = Plan("brkcoin deploy test", operations(tmp_path), ("a note",))
    lines = show(plan).splitlines()
    assert lines[:3] == [f"# brkcoin deploy test: {len(plan.operations)} operations, in this "
                         "order", "# a note", "# 1. a plain command"]
    numbered = [line for line in lines if line.startswith("# ") and ". " in line[:6]]
    assert [line.split(".")[0] for line in numbered] == [
        f"# {n}" for n in range(1, len(plan.operations) + 1)]


def test_a_description_cannot_leave_its_comment(tmp_path: Path) -> None:
    env = install_tool(tmp_path)
    plan = Plan("t", (Step("evil\ntool fail\n", ("tool", "plain")),))
    script = show(plan)
    assert "# 1. evil\\ntool fail\\n" in script
    (tmp_path / "plan.sh").write_text(script)
    subprocess.run(["bash", "-e", str(tmp_path / "plan.sh")], env=env, check=True)
    assert [args for args, _, _ in logged(tmp_path)] == [["plain"]]


def test_a_failing_operation_stops_the_plan_with_its_number(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    for name, value in install_tool(tmp_path).items():
        monkeypatch.setenv(name, value)
    plan = Plan("t", (Step("first", ("tool", "plain")), Step("second", ("tool", "fail")),
                      Step("third", ("tool", "plain"))))
    assert run(lambda: plan, False, "deploy test") == 2
    err = capsys.readouterr().err
    assert err == "brkcoin deploy test: step 2 (second): `tool fail` failed with exit code 3\n"
    assert [args for args, _, _ in logged(tmp_path)] == [["plain"], ["fail"]]


def test_a_missing_value_is_refused_before_running(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"\$\{VALUE\} is used before it is known"):
        carry_out(Plan("t", (Step("use", ("tool", VALUE)),)))


DRY_RUNS = {  # target: (what destroy takes too, what only deploy takes)
    "compose": ([], ["--workers", "3"]),
    "k8s": ([], ["--workers", "3"]),
    "aws": ([], ["--workers", "3", "--redis-url", "redis://wallet:6379/0"]),
    "gcp": (["--project", "my-project", "--region", "europe-west1"], ["--workers", "3"]),
}


def dry_run(verb: str, target: str, *extra: str) -> list[str]:
    both, deploy_only = DRY_RUNS[target]
    return [verb, target, "--dry-run", *both, *(deploy_only if verb == "deploy" else []),
            *extra]


@pytest.mark.parametrize("target", DRY_RUNS)
@pytest.mark.parametrize("verb", ["deploy", "destroy"])
def test_every_target_prints_its_plan_in_the_one_format(target: str, verb: str,
                                                        capsys) -> None:
    assert brkcoin(dry_run(verb, target)) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(f"# brkcoin {verb} {target}") and "operation" in first
    assert "# 1. " in out
    subprocess.run(["bash", "-n"], input=out, text=True, check=True)  # bash parses it


@pytest.mark.parametrize("target", DRY_RUNS)
def test_the_fan_out_shows_in_every_dry_run(target: str, capsys) -> None:
    assert brkcoin(dry_run("deploy", target)) == 0
    out = capsys.readouterr().out
    shown = {"compose": "--scale worker=3", "k8s": "name: worker-tick-3",
             "aws": "brkcoin-worker-tick-3 (3 of 3)", "gcp": "brkcoin-worker-tick-3 (3 of 3)"}
    assert shown[target] in out


@pytest.mark.parametrize("workers", ["0", "81", "-2"])
@pytest.mark.parametrize("target", DRY_RUNS)
def test_workers_out_of_bounds_are_refused(target: str, workers: str, capsys) -> None:
    assert brkcoin(dry_run("deploy", target, "--workers", workers)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"brkcoin deploy {target}: --workers must be ")
    assert err.count("\n") == 1
