"""The `ewc` command line: thin wrappers that parse arguments, call the library and print."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ewc._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ewc` command."""
    parser = argparse.ArgumentParser(
        prog="ewc",
        description="Elastic Weight Consolidation: named Fisher estimators and EWC penalties.",
    )
    parser.add_argument("--version", action="version", version=f"ewc {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
