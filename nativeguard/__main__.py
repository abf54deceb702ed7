"""Command line: ``nativeguard demo`` and ``soak`` (also ``python -m nativeguard ...``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["DEMO_REQUESTS", "DEMO_SDKS", "main"]

DEMO_SDKS = ("azure-speech", "onnxruntime", "grpc")
"""What ``nativeguard demo --sdk`` runs; each but Speech lives with its integration."""

DEMO_REQUESTS = 60
"""Requests per pattern by default: the whole demo takes about 30 s."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nativeguard",
        description="Deterministic release of native-backed SDK objects, and proof of it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help=(
            "show the naive Speech SDK service pattern leaking, and the guarded and "
            "isolated ones flat"
        ),
        description=(
            "Start the bundled SpeechService (offline), run a transcription service as "
            "written in the field N times, then the same code inside managed_transcriber "
            "N times, then as written in a recycled worker process N times, and compare "
            "native handles, live SDK objects, RSS, heap and time per request in this "
            "process. Exit status 0 when the naive pattern leaked and the other two "
            "stayed flat, 1 otherwise."
        ),
    )
    demo.add_argument(
        "--requests",
        type=_positive_int,
        default=DEMO_REQUESTS,
        metavar="N",
        help=f"requests per pattern (default: {DEMO_REQUESTS}, about 30 s in all)",
    )
    demo.add_argument(
        "--json", action="store_true", help="print the same numbers as JSON instead of a table"
    )
    demo.add_argument(
        "--sdk",
        choices=DEMO_SDKS,
        default="azure-speech",
        help=(
            "which SDK's service pattern to run: azure-speech (default; the bundled "
            "SpeechService), onnxruntime (inference sessions of a generated model; the "
            "onnxruntime extra) or grpc (channels to a server on 127.0.0.1; the grpc extra)"
        ),
    )
    demo.add_argument(
        "--gc",
        choices=("auto", "off"),
        default="auto",
        help=(
            "auto: Python's collector runs as in production (default); off: disabled in "
            "this process's phases, so the naive phase shows everything its reference cycles pin"
        ),
    )
    from ._cli.soak import add_soak_parser  # noqa: PLC0415 - its own module, like run_demo

    add_soak_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "soak":
        from ._cli.soak import soak_command  # noqa: PLC0415

        return soak_command(args, sys.stdout, sys.stderr)
    if args.command != "demo":  # pragma: no cover - argparse rejects other commands
        parser.error(f"unknown command {args.command!r}")
    if args.sdk != "azure-speech":
        return _integration_demo(args)
    try:
        # Imported here: the SDK loads only for a command that needs it.
        from ._cli.demo import run_demo  # noqa: PLC0415
    except (ImportError, OSError) as error:
        print(
            f"nativeguard demo: the Azure Speech SDK could not be loaded: {error}",
            file=sys.stderr,
        )
        return 1
    try:
        return run_demo(sys.stdout, requests=args.requests, as_json=args.json, gc_mode=args.gc)
    except KeyboardInterrupt:
        print("nativeguard demo: interrupted", file=sys.stderr)
        return 130


def _integration_demo(args: argparse.Namespace) -> int:
    """``demo --sdk onnxruntime|grpc``: the integration's own naive / guarded / isolated table."""
    extra = args.sdk
    try:
        module = importlib.import_module(f"nativeguard.integrations.{args.sdk}._demo")
    except (ImportError, OSError) as error:
        print(
            f"nativeguard demo --sdk {args.sdk}: {error}; install it with "
            f"pip install 'nativeguard[{extra}]'",
            file=sys.stderr,
        )
        return 1
    try:
        status: int = module.run_demo(sys.stdout, requests=args.requests, as_json=args.json)
    except KeyboardInterrupt:
        print(f"nativeguard demo --sdk {args.sdk}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
