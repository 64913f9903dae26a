"""A local Schema Registry (Apicurio Registry, in-memory storage) on 127.0.0.1, for the Avro
tests and the demo. It serves the Confluent-compatible API at ``/apis/ccompat/v7``, which is
what confluent-kafka's ``SchemaRegistryClient`` and the sink speak.

The registry is Apicurio's released Quarkus application from Maven Central
(``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``), fetched once through ``mvn`` and
unpacked under ``$KNOCK_SINK_CACHE`` (default ``~/.cache/knock-sink``), like the Kafka broker
beside it. Apicurio 3.x needs Java 21+: the launcher takes the newest Java 21+ it finds
(``$JAVA_HOME``, ``/usr/lib/jvm/*``, ``java`` on PATH) and otherwise falls back to Apicurio
2.6 on the Java 17 the broker needs anyway.

Standard library only, so that it runs before the project's virtualenv exists::

    deploy/local/registry start [--port 0] [--dir DIR]   # prints the ccompat URL, detaches
    deploy/local/registry stop --dir DIR
    deploy/local/registry run [--port 8081]               # foreground until Ctrl-C
    deploy/local/registry fetch                           # only download into the cache

From Python: ``with Registry() as r: r.url``. ``stop()`` then ``start()`` restarts it on the
same port, empty (the storage is in memory).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from kafka_broker import CACHE
from launcher import LocalService, command_line, free_port, serve_until_signal, stop_dir

#: Apicurio 3 (Java 21+) and the last 2.x line (Java 11+), used when no Java 21 is around.
VERSION = "3.3.3"
FALLBACK_VERSION = "2.6.13.Final"
CCOMPAT_PATH = "/apis/ccompat/v7"
_PREFERRED_JAVA = "/usr/lib/jvm/temurin-25-jdk-amd64/bin/java"


def java_version(java: str) -> int:
    """The feature version (17, 21, 25...) of a ``java`` binary, 0 if it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return 0
    major = int(m.group(1))
    # Java 8 and older spell themselves "1.8".
    return int(m.group(2) or 0) if major == 1 else major


def choose_java() -> tuple[str, str]:
    """``(java binary, Apicurio version)``: the newest Java 21+ found runs Apicurio 3, else
    the ``java`` on PATH runs the 2.x fallback."""
    candidates = [_PREFERRED_JAVA]
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    best, best_version = "", 0
    for java in dict.fromkeys(candidates):  # ordered, without duplicates
        if os.access(java, os.X_OK):
            v = java_version(java)
            if v > best_version:
                best, best_version = java, v
    if best_version >= 21:
        return best, VERSION
    if best_version >= 11:
        return best, FALLBACK_VERSION
    raise RuntimeError("the local Schema Registry needs Java 11+ (21+ for Apicurio 3)")


def ensure_app(version: str) -> Path:
    """Return the unpacked Apicurio application directory (see :func:`runner_jar`), fetching
    it with Maven once."""
    app = CACHE / f"apicurio-registry-{version}"
    if (app / ".complete").exists():
        return app
    if shutil.which("mvn") is None:
        raise RuntimeError("the local Schema Registry needs mvn on PATH to fetch Apicurio")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"apicurio-{version}.tmp-", dir=CACHE))
    try:
        cmd = [
            "mvn",
            "-q",
            "-B",
            "dependency:copy",
            f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
            f"-DoutputDirectory={tmp / 'dl'}",
        ]
        # cwd=tmp: no pom.xml there, so mvn runs the goal standalone.
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(
                f"mvn could not fetch Apicurio {version}:\n{proc.stdout}{proc.stderr}"
            )
        (tarball,) = (tmp / "dl").glob("*.tar.gz")
        unpacked = tmp / "app"
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
        root = runner_jar(unpacked).parent
        (root / ".complete").touch()
        try:
            root.rename(app)
        except OSError:
            pass  # another process won the race; either copy is complete
        return app
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def runner_jar(app: Path) -> Path:
    """The jar to run: ``quarkus-run.jar`` (3.x, Quarkus fast-jar) or ``*-runner.jar`` (2.x,
    legacy jar with ``lib/`` beside it), at the top of ``app`` or one directory down."""
    for pattern in ("quarkus-run.jar", "*-runner.jar", "*/quarkus-run.jar", "*/*-runner.jar"):
        found = sorted(app.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError(f"no quarkus-run.jar or *-runner.jar in {app}")


class Registry(LocalService):
    """One Apicurio Registry process with in-memory storage. ``url`` is the Confluent-compatible
    base URL. ``dir`` (log, pid file) is removed by ``close()`` only when the registry made it."""

    STATE = "registry.json"

    def __init__(
        self,
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        java: str | None = None,
        version: str | None = None,
    ) -> None:
        super().__init__(data_dir, "knock-sink-registry-")
        self.port = port or free_port()
        # Apicurio 3's management interface (health, metrics) is fixed on at build time, on
        # 0.0.0.0:9000 by default: move it to loopback on a port of its own, so two registries
        # (the tests start a second one) do not collide and nothing listens beyond loopback.
        self.management_port = free_port()
        if java is None:
            java, chosen = choose_java()
            version = version or chosen
        self.java = java
        self.version = version or VERSION
        #: Seconds the last ``start()`` took from launch to the first answer (after any fetch).
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def _command(self, app: Path) -> list[str]:
        props = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": self.port,
            "quarkus.management.host": "127.0.0.1",
            "quarkus.management.port": self.management_port,
            # Every request would log a line; the log is for start-up failures.
            "quarkus.http.access-log.enabled": "false",
            # In-memory H2 is the default storage; a pool of 20 idle connections is not needed.
            "apicurio.datasource.jdbc.initial-size": 2,
            "apicurio.datasource.jdbc.min-size": 2,
        }
        return [
            self.java,
            "-Xms128m",
            "-Xmx512m",
            # C1 only: start-up is most of this registry's life in a test run.
            "-XX:TieredStopAtLevel=1",
            *(f"-D{k}={v}" for k, v in props.items()),
            "-jar",
            str(runner_jar(app)),
        ]

    def start(self, timeout: float = 120.0) -> Registry:
        app = ensure_app(self.version)
        log = open(self.dir / "registry.log", "ab")  # noqa: SIM115 - the child writes it for its lifetime
        began = time.monotonic()
        self.proc = subprocess.Popen(
            self._command(app),
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._record(url=self.url, version=self.version)
        self._wait_ready("Apicurio", "registry.log", self.ready, timeout)
        self.start_seconds = time.monotonic() - began
        return self

    def ready(self) -> bool:
        """True once the ccompat API answers 200 (the port opens before storage is ready)."""
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False


def main(argv: list[str] | None = None) -> int:
    args = command_line(
        "deploy/local/registry",
        __doc__,
        "registry",
        8081,
        "only download Apicurio into the cache",
        argv,
    )
    if args.cmd == "fetch":
        began = time.monotonic()
        java, version = choose_java()
        path = ensure_app(version)
        print(
            json.dumps(
                {"app": str(path), "java": java, "seconds": round(time.monotonic() - began, 1)}
            )
        )
        return 0
    if args.cmd == "stop":
        return stop_dir(Path(args.dir), Registry.STATE)
    directory = Path(args.dir) if args.dir else None
    registry = Registry(args.port, directory)
    registry.start()
    assert registry.proc is not None
    if args.cmd == "start":
        print(
            json.dumps(
                {
                    "url": registry.url,
                    "dir": str(registry.dir),
                    "pid": registry.proc.pid,
                    "version": registry.version,
                    "start_seconds": round(registry.start_seconds or 0, 1),
                }
            )
        )
        return 0
    print(
        f"Apicurio Registry {registry.version} serving {registry.url} (Ctrl-C to stop)", flush=True
    )
    return serve_until_signal(registry)


if __name__ == "__main__":
    sys.exit(main())
