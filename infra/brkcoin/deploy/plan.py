"""The one deploy interface: a target turns its options into a Plan, an ordered list
of operations; `--dry-run` prints it and nothing else, otherwise the very same
operations are carried out, in the same order. `destroy` is a plan too.

Every operation has a one-line description and says how it is carried out (a
command line, an API call with its arguments, a file written). Values known only
once an earlier operation ran (a service's URL, a role's ARN) are `Var`s: printed
as ${NAME}, put in when the operation runs.

The printed plan is one format for every target, and valid bash: descriptions
and API calls are `#` comments, commands are lines a shell runs as they are.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from brkcoin.deploy.common import DeployError

Values = dict[str, Any]  # what each Var holds once the operation that sets it has run


@dataclass(frozen=True)
class Var:
    """A value an earlier operation of the plan produces, e.g. Var("WORKER_URL")."""

    name: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", self.name):
            raise ValueError(f"not a plan variable name: {self.name!r}")

    def value(self, values: Mapping[str, Any]) -> Any:
        try:
            return values[self.name]
        except KeyError:
            raise DeployError(f"${{{self.name}}} is used before it is known") from None


class Operation(Protocol):
    """One step of a plan."""

    @property
    def description(self) -> str: ...

    def how(self) -> list[str]:
        """How it is carried out, as lines of bash (comments for what is not a command)."""
        ...

    def apply(self, values: Values) -> None:
        """Carry it out; a failure raises DeployError."""
        ...


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Plan:
    title: str  # e.g. "brkcoin deploy gcp"
    operations: tuple[Operation, ...]
    notes: tuple[str, ...] = ()  # printed under the title
    preflight: Callable[[], None] = _nothing  # before applying: tools, endpoints, logins
    outcome: Callable[[Values], str] = field(default=lambda values: "")  # said when done


def one_line(text: str) -> str:
    """Text for a `#` comment: what the user typed can never end it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _safe(line: str) -> str:
    """A line of an operation's `how`: a comment stays one line whatever values it
    shows (commands quote their own, shell.py)."""
    return one_line(line) if line.lstrip().startswith("#") else line


def show(plan: Plan) -> str:
    """The plan as it is printed by --dry-run."""
    count = len(plan.operations)
    plural = "s" if count != 1 else ""
    lines = [f"# {one_line(plan.title)}: {count} operation{plural}, in this order"]
    lines += [f"# {one_line(note)}" for note in plan.notes]
    for number, operation in enumerate(plan.operations, 1):
        lines.append(f"# {number}. {one_line(operation.description)}")
        lines += map(_safe, operation.how())
    return "\n".join(lines) + "\n"


def carry_out(plan: Plan) -> Values:
    """Apply every operation in order; stop at the first that fails."""
    plan.preflight()
    values: Values = {}
    count = len(plan.operations)
    for number, operation in enumerate(plan.operations, 1):
        print(f"[{number}/{count}] {one_line(operation.description)}", flush=True)
        try:
            operation.apply(values)
        except DeployError as e:
            raise DeployError(f"step {number} ({one_line(operation.description)}): {e}") from e
    message = plan.outcome(values)
    if message:
        print(message)
    return values


def run(make: Callable[[], Plan], dry_run: bool, verb: str) -> int:
    """Make the plan (inputs are checked there), then print it or carry it out. A
    DeployError becomes one line and exit code 2, never a traceback."""
    try:
        plan = make()
        if dry_run:
            print(show(plan), end="")
        else:
            carry_out(plan)
    except DeployError as e:
        print(f"brkcoin {verb}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brkcoin {verb}: interrupted", file=sys.stderr)
        return 130
    return 0
