"""The `brkcoin` command: each subcommand lives in its own module with a
`register(subparsers)` that adds its parser and sets `run`."""

from __future__ import annotations

import argparse
import sys

from brkcoin import commands
from brkcoin.deploy import cli as deploy_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brkcoin",
        description="BRK coin miner, serverless edition: run, mine, benchmark and deploy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    deploy_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
