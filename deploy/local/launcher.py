"""What the local broker (``kafka_broker.py``) and the local registry (``registry.py``) share:
a free loopback port, one child process with a directory of its own, and stopping it, from
Python or from another shell (``stop --dir``).

Standard library only, like the launchers: they run before the project's virtualenv exists.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
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
