"""Command line: ``nativeguard demo`` (also ``python -m nativeguard demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nativeguard",
        description="Deterministic release of native-backed SDK objects, and proof of it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="run the Azure Speech SDK against the bundled local service, offline"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo  # noqa: PLC0415 - keeps --help from loading the SDK

        return run_demo(sys.stdout)
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
