"""What a user may give a deploy target, in one place.

Every text option of a target is checked before its plan is made: against the
rule of the name it becomes part of (the target's documented naming rules), or
else as printable text. So a bad value is a clear error naming the option and
the allowed form, never an odd resource name or a line break in a printed plan.
The printed plan does not rely on it: shell words are quoted (shell.py) and
comments are one line each (plan.show), whatever they hold.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from brkcoin.deploy.common import DeployError
from brkcoin.layout import MAX_WORKERS


@dataclass(frozen=True)
class Rule:
    form: str  # the allowed form in words, for the error
    pattern: str = ".*"  # the whole value matches it (ASCII classes: no \d or \w)

    def check(self, option: str, value: str) -> None:
        if not (value.isprintable() and re.fullmatch(self.pattern, value)):
            raise DeployError(f"{option} {value!r} is not {self.form}")

    def or_empty(self) -> Rule:
        """The same, or nothing: an option left out (the target says if it is required)."""
        return Rule(self.form, f"(?:{self.pattern})?")


TEXT = Rule("printable text (no newline, carriage return, escape or other control character)")

# AWS. Names are PREFIX-NAME, the longest PREFIX-worker-tick-N; Lambda function and
# EventBridge rule names take letters, digits, hyphens and underscores, up to 64.
_LONGEST = 64 - len(f"-worker-tick-{MAX_WORKERS}")
AWS_PREFIX = Rule(f"a name prefix: letters, digits, hyphens and underscores, at most "
                  f"{_LONGEST} (AWS names are at most 64)", rf"[A-Za-z0-9_-]{{1,{_LONGEST}}}")
AWS_REGION = Rule("an AWS region like us-east-1", r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
LAYER_ARN = Rule("a Lambda layer version ARN like "
                 "arn:aws:lambda:us-east-1:123456789012:layer:NAME:1",
                 r"(?=.{1,140}\Z)arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:[0-9]{12}:layer:"
                 r"[a-zA-Z0-9_-]+:[0-9]+")
_EVENTBRIDGE_FIELD = r"[0-9A-Za-z*?/,#-]+"
EVENTBRIDGE_SCHEDULE = Rule(
    "an EventBridge schedule like 'rate(1 minute)' or 'cron(* * * * ? *)'",
    r"rate\([1-9][0-9]* (?:minute|hour|day)s?\)"
    rf"|cron\({_EVENTBRIDGE_FIELD}(?: {_EVENTBRIDGE_FIELD}){{5}}\)")

# Google Cloud. Service account ids PREFIX-ROLE are 6 to 30 characters ("-scheduler"
# the longest role, "-rng" the shortest); the prefix also names the network, the
# subnet PREFIX-REGION and Memorystore's PREFIX-wallet.
GCP_PROJECT = Rule("a project id (6 to 30 lowercase letters, digits and hyphens, starting "
                   "with a letter, not ending with a hyphen)",
                   r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
GCP_REGION = Rule("a region like europe-west1", r"[a-z]+-[a-z]+[0-9]+")
GCP_PREFIX = Rule("a name prefix: 2 to 15 lowercase letters, digits and hyphens, starting "
                  "with a letter, not ending with a hyphen", r"[a-z][a-z0-9-]{0,13}[a-z0-9]")
GCP_RESOURCE = Rule("a resource name (lowercase letters, digits and hyphens, at most 63)",
                    r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1035, as Compute Engine

# Container images, as Docker's reference grammar has them.
_DOMAIN = (r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
           r"[A-Za-z0-9])?)*(?::[0-9]+)?")
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
REGISTRY = Rule("an image registry like ghcr.io/me or localhost:5000",
                rf"{_DOMAIN}(?:/{_PATH})*/?")
IMAGE_TAG = Rule("an image tag (letters, digits, _ . and -, at most 128, not starting with "
                 ". or -)", _TAG)
IMAGE = Rule("an image like python312 or REGISTRY/PATH/NAME:TAG",
             rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::{_TAG})?(?:@sha256:[0-9a-f]{{64}})?")
COMPOSE_PROJECT = Rule("a Compose project name (lowercase letters, digits, hyphens and "
                       "underscores, starting with a letter or digit)", r"[a-z0-9][a-z0-9_-]*")


def check(args: argparse.Namespace, rules: Mapping[str, Rule]) -> None:
    """Every text option in args by its rule (keyed by dest), any other by TEXT."""
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str | Path):
                rules.get(dest, TEXT).check(f"--{dest.replace('_', '-')}", str(text))
