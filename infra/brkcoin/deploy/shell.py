"""Operations that run commands (docker, kubectl, gcloud): printed as bash, carried
out with subprocess, the two forms made from the same data.

Quoting: an argument is literal text, a `Var` (a value the plan itself captures),
or both run together. In the printed script literal text is always single-quoted
by shlex and a `Var` is written "${NAME}", so those variables are the only thing
the shell expands, and their values are not parsed again. Whatever the user
typed is literal text: it can never name a variable.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from brkcoin.deploy.common import DeployError
from brkcoin.deploy.plan import Values, Var
from brkcoin.layout import ROOT

Part = str | Var
Word = Part | tuple[Part, ...]  # one argument: text, a variable, or several run together
Command = tuple[Word, ...]
HEREDOC_END = "BRKCOIN_END_OF_INPUT"


def _parts(word: Word) -> tuple[Part, ...]:
    return word if isinstance(word, tuple) else (word,)


def join(*words: Word) -> Word:
    """Several words run together into one argument (adjacent text merged)."""
    parts: list[Part] = []
    for part in (p for word in words for p in _parts(word)):
        last = parts[-1] if parts else None
        if isinstance(part, str) and isinstance(last, str):
            parts[-1] = last + part
        else:
            parts.append(part)
    return parts[0] if len(parts) == 1 else tuple(parts)


def shell_word(word: Word) -> str:
    """One argument as POSIX shell: text single-quoted as needed, variables "${NAME}"."""
    quoted = "".join(shlex.quote(p) if isinstance(p, str) else f'"${{{p.name}}}"'
                     for p in _parts(word))
    return quoted or "''"


def shell(command: Command) -> str:
    return " ".join(shell_word(word) for word in command)


def heredoc(text: str) -> str:
    """`<<'END'`, the text and the END line: the shell takes the text as it is."""
    if HEREDOC_END in text.splitlines():
        raise DeployError(f"an input to print holds the line {HEREDOC_END}")
    return f"<<'{HEREDOC_END}'\n{text.removesuffix(chr(10))}\n{HEREDOC_END}"


def argv(command: Sequence[Word], values: Mapping[str, object]) -> list[str]:
    """The command's arguments with each variable's value put in."""
    def text(part: Part) -> str:
        return part if isinstance(part, str) else str(part.value(values))

    return ["".join(text(p) for p in _parts(word)) for word in command]


def _call(command: Command, values: Values, *, quiet: bool = False, stdin: str | None = None,
          env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    words = argv(command, values)
    if not quiet:
        print(f"+ {shlex.join(words)}", flush=True)
    output = subprocess.PIPE if quiet else None
    try:
        return subprocess.run(words, cwd=ROOT, input=stdin, stdout=output, stderr=output,
                              text=True, env={**os.environ, **env} if env else None,
                              check=False)
    except FileNotFoundError:
        raise DeployError(f"`{words[0]}` is not installed or not on PATH") from None


@dataclass(frozen=True)
class Step:
    """One command, optionally guarded by a check command, or captured into a Var.

    check + command: run `command` unless `check` succeeds (create if missing);
    check + if_exists: run `if_exists` instead when it does (update);
    check + only_if_exists: run `command` only when `check` succeeds (delete).
    """

    description: str
    command: Command
    check: Command = ()
    if_exists: Command = ()
    only_if_exists: bool = False
    capture: Var | None = None  # set this variable from the command's output
    may_be_empty: bool = False  # a captured list may be empty; a single value may not
    env: tuple[tuple[str, str], ...] = ()  # set for the command
    stdin: str | None = None  # fed to the command (a here-document in the script)

    def how(self) -> list[str]:
        command = shell(self.command)
        if self.env:
            command = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env) + " " + command
        if self.stdin is not None:
            command += " " + heredoc(self.stdin)
        if self.capture:
            line = f"{self.capture.name}=$({command})"
            return [line] if self.may_be_empty else [line, f'test -n "${{{self.capture.name}}}"']
        if not self.check:
            return [command]
        check = f"{shell(self.check)} >/dev/null 2>&1"
        if self.if_exists:
            return [f"if {check}; then {shell(self.if_exists)}; else {command}; fi"]
        return [f"{check} {'&&' if self.only_if_exists else '||'} {command}"]

    def apply(self, values: Values) -> None:
        if self.capture:
            result = _call(self.command, values, quiet=True, stdin=self.stdin,
                           env=dict(self.env))
            value = result.stdout.rstrip("\n")  # as $(...) takes it
            if result.returncode != 0 or not (self.may_be_empty or value):
                raise DeployError(f"could not read {self.capture.name}: "
                                  f"{result.stderr.strip() or 'no output'}")
            values[self.capture.name] = value
            return
        command = self.command
        if self.check:
            exists = _call(self.check, values, quiet=True).returncode == 0
            if self.only_if_exists and not exists:
                return
            if exists and not self.only_if_exists:
                if not self.if_exists:
                    return
                command = self.if_exists
        result = _call(command, values, stdin=self.stdin, env=dict(self.env))
        if result.returncode != 0:
            raise DeployError(f"`{shlex.join(argv(command, values))}` failed "
                              f"with exit code {result.returncode}")


def items_of(text: str) -> list[str]:
    """The items of a captured list, split as the shell splits "${NAME}" unquoted."""
    return [item for item in re.split(r"[ \t\n]+", text) if item]


@dataclass(frozen=True)
class Each:
    """One command per item of a list an earlier Step captured (whitespace-separated
    names, e.g. what `gcloud ... list --format=value(name)` printed). In the script,
    a subshell without globbing: an item is split off, never expanded."""

    description: str
    items: Var
    item: Var  # the variable the command uses for the current item
    command: Command

    def how(self) -> list[str]:
        loop = f"for {self.item.name} in ${{{self.items.name}}}; do {shell(self.command)}; done"
        return [f"(set -f; {loop})"]

    def apply(self, values: Values) -> None:
        for item in items_of(str(self.items.value(values))):
            these = {**values, self.item.name: item}
            result = _call(self.command, these)
            if result.returncode != 0:
                raise DeployError(f"`{shlex.join(argv(self.command, these))}` failed "
                                  f"with exit code {result.returncode}")


@dataclass(frozen=True)
class WriteFile:
    """Write a file (e.g. the manifests, for someone else to apply)."""

    description: str
    path: Path
    text: str

    def how(self) -> list[str]:
        return [f"cat > {shlex.quote(str(self.path))} {heredoc(self.text)}"]

    def apply(self, values: Values) -> None:
        try:
            self.path.write_text(self.text)
        except OSError as e:
            raise DeployError(f"cannot write {self.path}: {e.strerror or e}") from e
