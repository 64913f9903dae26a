"""A single-node Apache Kafka broker (KRaft) on 127.0.0.1, for the demo, the tests and the
benchmarks.

The broker is the official one: its jars come from Maven Central through ``mvn`` (Java 17 and
Maven are the only requirements) and are cached under ``$KNOCK_SINK_CACHE`` (default
``~/.cache/knock-sink``), so only the first start downloads anything.

Standard library only, so that it runs before the project's virtualenv exists::

    deploy/local/kafka start [--port 0] [--dir DIR]   # prints the bootstrap address, detaches
    deploy/local/kafka stop --dir DIR
    deploy/local/kafka run [--port 9092]               # foreground until Ctrl-C

From Python: ``with Broker() as b: b.bootstrap``. ``stop()`` then ``start()`` restarts the same
broker on the same port and data (the chaos tests rely on that).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from launcher import LocalService, command_line, free_port, serve_until_signal, stop_dir

HERE = Path(__file__).resolve().parent
KAFKA_VERSION = "3.9.1"
CACHE = Path(os.environ.get("KNOCK_SINK_CACHE", Path.home() / ".cache" / "knock-sink"))

_LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.controller=WARN
# The launcher waits for this logger's "Kafka Server started" line.
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.org.apache.kafka.controller=ERROR
"""


def ensure_jars() -> Path:
    """Return the directory holding the broker's jars, fetching them with Maven once."""
    libs = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise RuntimeError("the local Kafka broker needs java (17+) and mvn on PATH")
    tmp = libs.with_name(f"libs.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(HERE / "pom.xml"),
        f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"mvn could not fetch Kafka {KAFKA_VERSION}:\n{proc.stdout}{proc.stderr}"
        )
    (tmp / ".complete").touch()
    # Another process may have won the race; either copy is complete.
    try:
        tmp.rename(libs)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


class Broker(LocalService):
    """One KRaft broker+controller process. ``data_dir`` survives ``stop()``; it is removed by
    ``close()`` only when the broker created it."""

    STATE = "broker.json"

    def __init__(self, port: int = 0, data_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(data_dir, "knock-sink-kafka-")
        self.port = port or free_port()
        self.controller_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # One partition makes the group coordinator ready in a fraction of a second.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            # Tests join and leave groups constantly; the default 3 s delay is pure waiting.
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": "10485760",
        }
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.dir / "log4j.properties").write_text(_LOG4J)
        return path

    def _java(self, libs: Path, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def start(self, timeout: float = 90.0) -> Broker:
        libs = ensure_jars()
        config = self._write_config()
        if not (self.dir / "data" / "meta.properties").exists():
            # KRaft cluster ids are 16 random bytes in URL-safe base64 without padding; one
            # that starts with "-" would be read by StorageTool as an option (1 start in 64).
            cluster = "-"
            while cluster.startswith("-"):
                cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
            fmt = self._java(
                libs, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(config)
            )
            subprocess.run(fmt, check=True, capture_output=True)
        log = open(self.dir / "broker.log", "ab")  # noqa: SIM115 - the child writes it for its lifetime
        self.proc = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._record(bootstrap=self.bootstrap)
        self._wait_ready("Kafka", "broker.log", self._broker_ready, timeout)
        return self

    def _broker_ready(self) -> bool:
        # The broker logs "started" only after its listeners and metadata are ready; a bare
        # TCP connect would succeed earlier, while requests still fail.
        if b"Kafka Server started" not in (self.dir / "broker.log").read_bytes():
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


def main(argv: list[str] | None = None) -> int:
    args = command_line(
        "deploy/local/kafka",
        __doc__,
        "broker",
        9092,
        "only download the broker jars into the cache",
        argv,
    )
    if args.cmd == "fetch":
        print(ensure_jars())
        return 0
    if args.cmd == "stop":
        return stop_dir(Path(args.dir), Broker.STATE)
    directory = Path(args.dir) if args.dir else None
    broker = Broker(args.port, directory)
    broker.start()
    if args.cmd == "start":
        print(
            json.dumps(
                {"bootstrap": broker.bootstrap, "dir": str(broker.dir), "pid": broker.proc.pid}
            )
        )
        return 0
    print(f"Kafka {KAFKA_VERSION} serving on {broker.bootstrap} (Ctrl-C to stop)", flush=True)
    return serve_until_signal(broker)


if __name__ == "__main__":
    sys.exit(main())
