"""A small model of infra/container/Dockerfile for the tests: its stages, each with
what it inherits from the stage it is built FROM (ENV, USER, HEALTHCHECK, CMD)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser


@dataclass
class Stage:
    name: str
    base: str  # the FROM image or stage, ARGs substituted
    parent: Stage | None = None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def own(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def effective(self, instruction: str) -> str | None:
        """The last value of an instruction here or in the stages it builds on."""
        values = self.own(instruction)
        if values:
            return values[-1]
        return self.parent.effective(instruction) if self.parent else None

    def env(self) -> dict[str, str]:
        inherited = self.parent.env() if self.parent else {}
        for value in self.own("ENV"):
            for key, val in re.findall(r'(\w+)=("[^"]*"|\S+)', value):
                inherited[key] = val.strip('"')
        return inherited

    def cmd(self) -> list[str]:
        value = self.effective("CMD")
        assert value is not None, f"stage {self.name} has no CMD"
        return json.loads(value)  # exec form only: no shell between Docker and the server

    def copies(self) -> list[tuple[str, str]]:
        pairs = []
        for value in self.own("COPY"):
            parts = value.split()
            assert not any(p.startswith("--from") for p in parts), "no cross-stage COPY here"
            pairs.append((parts[0], parts[1]))
        return pairs


def parse(path: Path) -> dict[str, Stage]:
    parser = DockerfileParser(path=str(path))
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "ARG" and current is None:
            key, _, default = value.partition("=")
            args[key.strip()] = default.strip()
        elif kind == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", value.strip(), re.IGNORECASE)
            assert match, f"cannot read FROM {value!r}"
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = Stage(match.group(2) or "", image, stages.get(image))
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((kind, value))
    return stages
