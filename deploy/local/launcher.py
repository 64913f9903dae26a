"""What the local broker (``kafka_broker.py``) and the local registry (``registry.py``) share:
a free loopback port, one child process with a directory of its own, and stopping it, from
Python or from another shell (``stop --dir``).

Standard library only, like the launchers: they run before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalService:
    """One child process and its directory. The directory survives :meth:`stop`; :meth:`close`
    removes it only when the service created it. Subclasses implement ``start()``."""

    #: The file in the directory naming the child's pid, for ``stop --dir`` from another shell.
    STATE = "service.json"

    def __init__(self, directory: str | os.PathLike[str] | None, prefix: str) -> None:
        self._owns_dir = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix=prefix))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def _wait_ready(
        self, name: str, log_name: str, ready: Callable[[], bool], timeout: float
    ) -> None:
        """Wait until ``ready()``; raise with the log's tail when the child exits or ``timeout``
        passes (the child is stopped then)."""
        deadline = time.monotonic() + timeout
        log = self.dir / log_name
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {self.proc.returncode}:\n{log.read_text()[-4000:]}"
                )
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{name} did not start within {timeout}s:\n{log.read_text()[-4000:]}")

    def _record(self, **info: Any) -> None:
        assert self.proc is not None
        (self.dir / self.STATE).write_text(json.dumps({"pid": self.proc.pid, **info}))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_dir(directory: Path, state: str, timeout: float = 30.0) -> int:
    """Stop the service started with ``start --dir directory`` (another shell's child)."""
    info = json.loads((directory / state).read_text())
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.1)
    os.kill(info["pid"], signal.SIGKILL)
    return 0


def serve_until_signal(service: LocalService) -> int:
    """``run``: keep the service up until SIGINT or SIGTERM, then close it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    service.close()
    return 0


def command_line(
    prog: str, doc: str, noun: str, default_port: int, fetch_help: str, argv: list[str] | None
) -> argparse.Namespace:
    """The launchers' shared verbs: ``start`` (background, prints JSON), ``run`` (foreground),
    ``stop --dir`` and ``fetch``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("start", "run"):
        p = sub.add_parser(
            name, help=f"start a {noun}" + (" in the foreground" if name == "run" else "")
        )
        p.add_argument("--port", type=int, default=0 if name == "start" else default_port)
        p.add_argument(
            "--dir", help="directory for the data, the log and the pid file (kept after stop)"
        )
    p = sub.add_parser("stop", help=f"stop the {noun} started with --dir DIR")
    p.add_argument("--dir", required=True)
    sub.add_parser("fetch", help=fetch_help)
    args = parser.parse_args(argv)
    if getattr(args, "dir", None) and args.cmd in ("start", "run"):
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    return args
