"""``knock-sink emulator``: serve the emulator in the foreground.

The lead wires :func:`add_arguments` and :func:`main` into the ``knock-sink`` command;
``python -m consumer.emulator`` uses them directly.
"""

from __future__ import annotations

import argparse
import os
import signal
from types import FrameType

import uvicorn

from .app import create_app
from .limits import FaultSettings
from .server import bind_socket, uvicorn_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 = a free port)")
    parser.add_argument(
        "--db", default=None, help="SQLite file kept across restarts (default: memory)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="the Bearer key clients must send (default: $KNOCK_API_KEY, else sk_test_emulator)",
    )
    parser.add_argument("--rate-limits", choices=("knock", "off"), default="knock")
    parser.add_argument("--merge", choices=("deep", "shallow"), default="deep")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of /v1 requests answered 500/503"
    )
    parser.add_argument(
        "--rate-limit-rate", type=float, default=0.0, help="share of /v1 requests answered 429"
    )
    parser.add_argument(
        "--latency-ms", type=int, default=0, help="latency added to every /v1 request"
    )
    parser.add_argument(
        "--failing-user",
        action="append",
        default=[],
        metavar="USER_ID",
        help="a user Knock refuses wherever it is upserted (repeatable)",
    )
    parser.add_argument(
        "--workflows",
        default=None,
        metavar="KEY,KEY",
        help="the workflow keys that exist; triggering another is a 404 (default: any key)",
    )


def main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return 0. Prints one line with the URL first, so a
    script can read the port when ``--port 0`` was given."""
    for name, value in (
        ("--error-rate", args.error_rate),
        ("--rate-limit-rate", args.rate_limit_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise SystemExit(f"invalid setting {name}: must be between 0 and 1")
    api_key = args.api_key or os.environ.get("KNOCK_API_KEY") or "sk_test_emulator"
    faults = FaultSettings(
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        latency_ms=max(0, args.latency_ms),
        failing_users=frozenset(args.failing_user),
        workflows=_workflow_keys(args.workflows),
    )
    app = create_app(
        api_key=api_key, rate_limits=args.rate_limits, merge=args.merge, db=args.db, faults=faults
    )
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"knock-sink emulator listening on http://{host}:{port}", flush=True)
    # uvicorn shuts down cleanly on SIGINT/SIGTERM, then re-raises the signal to the handlers
    # it found installed. Installing no-op ones first turns that into a plain return: exit 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(uvicorn_config(app)).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _workflow_keys(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    return frozenset(key.strip() for key in raw.split(",") if key.strip())


def _ignore(signum: int, frame: FrameType | None) -> None:
    return None
