"""Health step: what the probes ask, and the one small HTTP server on the metrics port that
answers them beside ``/metrics``.

* ``GET /healthz`` (liveness): the loop's last turn is recent. The loop keeps turning through a
  long Knock outage (retries run on the flight's worker threads) and through the shutdown
  drain, so neither makes it fail; only a loop that stopped turning does, and then a restart
  is the cure. Before the loop starts (the start-up check may be retrying an unreachable Knock)
  the process is alive: restarting it would only start the same wait again.
* ``GET /readyz`` (readiness): the start-up check passed (Knock answered with the key), no
  fatal error since, and the loop is not stuck. Partitions do not gate it: a member still
  settling into the group, or one with no partition at all (replicas > partitions), is ready,
  else a rollout with more replicas than partitions would never finish.

Both answer a small JSON body saying why. prometheus-client's own server serves one registry
and no other route, so this one is wsgiref (standard library) with ``make_wsgi_app`` mounted at
``/metrics``, threaded so that a slow scrape never delays a probe.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from .errors import ConfigError


class Health:
    """The loop's vital signs, written by the loop thread, read by the probe threads (plain
    attribute writes: atomic in CPython, and a probe reading one turn late is harmless).

    :param stall: seconds without a loop turn after which the sink is neither live nor ready.
    """

    def __init__(self, stall: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall = stall
        self._clock = clock
        self._last_turn: float | None = None
        self._checked = False
        self._fatal: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._server: HealthServer | None = None

    def serve(self, registry: CollectorRegistry, port: int) -> None:
        """Serve the probes and ``registry``'s metrics on ``port`` until :meth:`close`."""
        self._server = HealthServer(registry, self, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- written by the loop --

    def turned(self) -> None:
        self._last_turn = self._clock()

    def checked(self) -> None:
        """The start-up check passed: Knock answered with the key."""
        self._checked = True
        self.turned()

    def fatal(self, reason: str) -> None:
        self._fatal = reason

    def assigned(self, tps: Iterable[tuple[str, int]]) -> None:
        self._assigned |= set(tps)

    def unassigned(self, tps: Iterable[tuple[str, int]]) -> None:
        self._assigned -= set(tps)

    @property
    def check_passed(self) -> bool:
        """Whether the start-up check passed (from then on a stop drains what was read)."""
        return self._checked

    @property
    def partitions(self) -> frozenset[tuple[str, int]]:
        """The partitions assigned now."""
        return frozenset(self._assigned)

    # -- read by the probes --

    def _since(self) -> float | None:
        last = self._last_turn
        return None if last is None else self._clock() - last

    def live(self) -> tuple[bool, dict[str, Any]]:
        since = self._since()
        if since is None:
            return True, {"status": "starting"}
        ok = since <= self.stall
        return ok, {"status": "ok" if ok else "stalled", "last_turn_seconds_ago": round(since, 3)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        since = self._since()
        body: dict[str, Any] = {"partitions": len(self._assigned)}
        if self._fatal is not None:
            return False, {**body, "status": "fatal", "reason": self._fatal}
        if not self._checked:
            return False, {**body, "status": "starting", "reason": "start-up check not passed yet"}
        if since is not None and since > self.stall:
            return False, {**body, "status": "stalled", "last_turn_seconds_ago": round(since, 3)}
        return True, {**body, "status": "ok"}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    # wsgiref prints one line per request to stderr, around the logging setup; probes every few
    # seconds would drown the sink's own lines.
    def log_message(self, format: str, *args: Any) -> None:
        pass


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (0: any free port, see
    :attr:`port`), served from a daemon thread until :meth:`close`."""

    def __init__(
        self, registry: CollectorRegistry, health: Health, port: int, addr: str = "0.0.0.0"
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._health = health
        try:
            self._server = make_server(
                addr, port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(
                "sink.metrics_port", f"cannot listen on {addr}:{port}: {exc.strerror}"
            ) from None
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, body = (self._health.live if path == "/healthz" else self._health.ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        if path in ("/metrics", "/"):
            page: Iterable[bytes] = self._metrics(environ, start_response)
            return page
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics, /healthz, /readyz\n"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
