"""Run the emulator on uvicorn in a background thread, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from .app import create_app
from .limits import Clock, FaultSettings
from .state import MergeMode, RateLimitMode

_START_TIMEOUT = 10.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; binding it ourselves makes port 0 resolve before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any) -> uvicorn.Config:
    """One process, httptools, no access log: the emulator's serving setup."""
    return uvicorn.Config(
        app,
        http="httptools",
        loop="auto",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


class EmulatorServer:
    """The emulator served from a background thread on a free port (or ``port``).

    Usable as a context manager or through :meth:`start`/:meth:`stop`. After :meth:`start`
    returns the server answers HTTP at :attr:`url`. The helper methods are thin calls to the
    control API and raise :class:`httpx.HTTPStatusError` on an error answer.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk_test_emulator",
        rate_limits: RateLimitMode = "knock",
        merge: MergeMode = "deep",
        db: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self._port = port
        self._options: dict[str, Any] = {
            "api_key": api_key,
            "rate_limits": rate_limits,
            "merge": merge,
            "db": db,
            "faults": faults,
        }
        if clock is not None:
            # Read from the server thread while the test thread advances it: a plain float
            # read, so no lock is needed.
            self._options["clock"] = clock
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self.url = ""

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Serve and wait until the server answers.

        :raises RuntimeError: already started, or not answering within 10 s.
        """
        if self._thread is not None:
            raise RuntimeError("EmulatorServer already started")
        sock = bind_socket(self.host, self._port)
        port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        #: The ASGI app being served (its ``state.emulator`` is the live state, for tests
        #: that must reach past the HTTP surface).
        self.app = create_app(**self._options)
        self._server = uvicorn.Server(uvicorn_config(self.app))
        server = self._server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="knock-emulator", daemon=True
        )
        self._thread.start()
        self._client = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.api_key}"}, timeout=30
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("emulator did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut down (queued bulk operations are applied first); idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._client is not None:
            self._client.close()
        self._server = self._thread = self._client = None

    # -- control API ----------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._client is None:
            raise RuntimeError("EmulatorServer is not running")
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return response

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Change faults (see ``POST /_emulator/faults``); returns the faults now in force."""
        result: dict[str, Any] = self._call("POST", "/_emulator/faults", json=fields).json()
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def users(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/users").json()
        return result

    def stats(self, by_user: bool = False) -> dict[str, Any]:
        params = {"by_user": "1"} if by_user else {}
        result: dict[str, Any] = self._call("GET", "/_emulator/stats", params=params).json()
        return result

    def triggers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/triggers").json()
        return result

    def tenants(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/tenants").json()
        return result

    def objects(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/objects").json()
        return result

    def subscriptions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/subscriptions").json()
        return result

    def audiences(self) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = self._call("GET", "/_emulator/audiences").json()
        return result

    def deleted(self) -> list[str]:
        result: list[str] = self._call("GET", "/_emulator/deleted").json()
        return result
