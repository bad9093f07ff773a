"""`brkcoin deploy TARGET` and `brkcoin destroy TARGET` (placeholder until the deploy work lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `deploy` and `destroy` subcommands."""
