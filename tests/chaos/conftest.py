"""Building blocks of the chaos cases: sizes, seeded streams, the sink as a process, a watcher of
the group's commits, the dead-letter reader and a broker of the module's own.

Nothing here knows how the sink works inside: streams are generated here, their expected effect
comes from :mod:`tests.model`, and progress is read from the broker (commits) and the emulator
(identify entries received).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.conftest import ROOT, Kafka, sink_env, wait_for

FULL = os.environ.get("KNOCK_SINK_CHAOS_FULL") == "1"
MODE = "full" if FULL else "short"
CLI = [sys.executable, "-m", "consumer.cli"]
H_KIND = "knock-sink.error.kind"
H_REASON = "knock-sink.error.reason"


@dataclass(frozen=True)
class Size:
    events: int
    users: int
    partitions: int = 3


#: Case 1 at full size is exactly the issue's; the others use the same stream size.
SIZE = Size(100_000, 10_000) if FULL else Size(10_000, 1_000)


# -- seeds -------------------------------------------------------------------------------------


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """``KNOCK_SINK_CHAOS_SEED`` replays a run; otherwise a fresh seed, printed."""
    value = int(os.environ.get("KNOCK_SINK_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(
        f"\n[chaos] {request.node.name}: seed {value} (KNOCK_SINK_CHAOS_SEED={value} to replay)",
        flush=True,
    )
    return value


# -- streams -----------------------------------------------------------------------------------


@dataclass
class Record:
    """One Kafka record to produce, with the label the test knows it by."""

    key: bytes | None
    value: bytes | None
    event: dict[str, Any] | None = None  # the valid event, when it is one
    poison: str | None = None  # expected dead-letter kind, when it is poison
    names: str | None = None  # what the dead-letter reason must name, when known
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    offset: int = -1  # filled in by produce()


def identify_event(rng: random.Random, user: str, seq: int) -> dict[str, Any]:
    """An identify whose traits always carry an object under ``nested``: the sink may never fold
    two such updates of one user into one entry, which makes the fault-free count of identify
    entries exactly the number of events (the base of "duplicates sent")."""
    traits: dict[str, Any] = {
        "seq": seq,
        f"k{seq % 5}": rng.randrange(1000),
        "nested": {f"n{seq % 3}": seq, "deep": {f"d{seq % 2}": rng.randrange(100)}},
    }
    if rng.random() < 0.1:
        traits[f"k{(seq + 1) % 5}"] = None  # null overwrites
    if rng.random() < 0.2:
        traits["email"] = f"{user}+{seq}@example.com"
    return {"type": "identify", "userId": user, "messageId": f"m-{seq}", "traits": traits}


def identify_stream(rng: random.Random, size: Size) -> list[list[Record]]:
    """``size.events`` identify events over ``size.users`` users, per partition; a user's events
    all go to partition ``index % partitions``, in order."""
    parts: list[list[Record]] = [[] for _ in range(size.partitions)]
    for seq in range(size.events):
        u = rng.randrange(size.users)
        user = f"u{u}"
        ev = identify_event(rng, user, seq)
        parts[u % size.partitions].append(Record(user.encode(), orjson.dumps(ev), event=ev))
    return parts


def events_of(parts: list[list[Record]]) -> list[dict[str, Any]]:
    """The valid events, in an order that keeps each user's own order (all the model needs:
    a user's events never span partitions)."""
    return [r.event for p in parts for r in p if r.event is not None]


def produce(kafka: Kafka, topic: str, parts: list[list[Record]]) -> dict[int, int]:
    """Produce every partition's records in order (idempotent producer: no reordering, no
    duplicates), fill in each record's offset, and return the end offsets."""
    p = Producer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "message.max.bytes": 4_000_000,
        }
    )
    errors: list[Any] = []

    def delivered(err: Any, msg: Any, rec: Record) -> None:
        if err is not None:
            errors.append(err)
        else:
            rec.offset = msg.offset()

    for pid, records in enumerate(parts):
        for rec in records:
            while True:
                try:
                    p.produce(
                        topic,
                        rec.value,
                        rec.key,
                        partition=pid,
                        headers=rec.headers or None,
                        on_delivery=lambda e, m, r=rec: delivered(e, m, r),
                    )
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
    assert p.flush(60) == 0 and not errors, errors
    for records in parts:
        assert [r.offset for r in records] == list(range(len(records)))
    return {pid: len(records) for pid, records in enumerate(parts) if records}


# -- the sink as a process ---------------------------------------------------------------------


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """A TOML settings file for settings that have no flag (``sink.item_attempts``...)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class SinkProc:
    """``knock-sink run|backfill`` as a child process; output goes to files (a pipe nobody reads
    would block a process that logs every retry)."""

    def __init__(self, env: dict[str, str], args: list[str], logs: Path, name: str) -> None:
        self.name = name
        self.out = logs / f"{name}.out"
        self.err = logs / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([*CLI, *args], env=env, cwd=ROOT, stdout=out, stderr=err)
        self.started = time.monotonic()

    def kill(self) -> int:
        self.proc.kill()
        return self.proc.wait(30)

    def terminate(self, timeout: float = 90) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stderr_tail(self, n: int = 4000) -> str:
        return self.err.read_text(errors="replace")[-n:]

    def summary(self) -> dict[str, Any]:
        lines = self.out.read_text().strip().splitlines()
        assert lines, f"{self.name} printed no summary; stderr:\n{self.stderr_tail()}"
        return orjson.loads(lines[-1])  # type: ignore[no-any-return]


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Any]:
    """Start sink processes with ``sinks(env, *args)``; any still running at the end is killed."""
    started: list[SinkProc] = []

    def start(env: dict[str, str], *args: str) -> SinkProc:
        proc = SinkProc(env, list(args), tmp_path, f"sink-{len(started)}")
        started.append(proc)
        return proc

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(30)
        # Shown by pytest only when the test failed.
        print(f"--- {s.name} (exit {s.proc.returncode}) stderr tail ---\n{s.stderr_tail(1500)}")


def env_for(kafka: Kafka, api: Any, topic: str) -> dict[str, str]:
    return sink_env(kafka, api, topic)


# -- watching progress -------------------------------------------------------------------------


class Progress:
    """Samples the group's committed positions every 0.1 s on a thread of its own, so the
    times of resumption and catch-up after a fault are read from the samples afterwards.

    ``history`` holds ``(monotonic time, committed total)``; a broker that does not answer
    leaves a gap, not a sample."""

    def __init__(
        self, kafka: Kafka, group: str, topic: str, ends: dict[int, int], api: Any = None
    ) -> None:
        self.topic, self.ends = topic, ends
        self.total_end = sum(ends.values())
        self._consumer = Consumer(
            {"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._tps = [TopicPartition(topic, p) for p in ends]
        self.history: list[tuple[float, int]] = []
        #: ``(monotonic time, identify entries the emulator accepted)``, when given the API.
        self.knock: list[tuple[float, int]] = []
        self._api = api
        self.last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-progress", daemon=True)
        self._thread.start()

    def sample_now(self) -> int:
        """A fresh sample (at a fault, so that the base of :meth:`resume_after` is exact)."""
        wait_for(self._sample, 60, "the group's commits")
        return self.committed_total()

    def _sample(self) -> bool:
        try:
            res = self._consumer.committed(self._tps, timeout=2)
        except KafkaException:
            return False
        now = time.monotonic()
        self.last = {tp.partition: tp.offset for tp in res if tp.offset >= 0}
        self.history.append((now, sum(self.last.values())))
        return True

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()
            if self._api is not None:
                try:
                    self.knock.append(
                        (time.monotonic(), int(self._api.stats()["identify_entries"]))
                    )
                except Exception:
                    pass

    def committed_total(self) -> int:
        return self.history[-1][1] if self.history else 0

    def caught_up(self) -> bool:
        return self.last == self.ends

    def wait_caught_up(self, timeout: float) -> float:
        wait_for(self.caught_up, timeout, "every partition committed up to its end offset")
        return time.monotonic()

    def resume_after(self, t: float) -> float | None:
        """Seconds from ``t`` until the committed total first grew past its value at ``t``."""
        before = [n for s, n in list(self.history) if s <= t]
        base = before[-1] if before else 0
        for s, n in self.history:
            if s > t and n > base:
                return s - t
        return None

    def knock_resume_after(self, t: float, grace: float = 0.0) -> float | None:
        """Seconds from ``t`` until Knock accepted an identify entry again, counting from the
        entries seen ``grace`` seconds after ``t`` (after a SIGKILL, the dead process's last
        requests are still being answered for a moment)."""
        samples = list(self.knock)
        before = [n for s, n in samples if s <= t + grace]
        base = before[-1] if before else 0
        return next((s - t for s, n in samples if s > t + grace and n > base), None)

    def caught_up_after(self, t: float) -> float | None:
        """Seconds from ``t`` until the first sample with everything committed."""
        for s, n in self.history:
            if s >= t and n == self.total_end:
                return s - t
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


# -- dead letters ------------------------------------------------------------------------------


def dead_letters(kafka: Kafka, dlq: str, expected: int) -> list[dict[str, Any]]:
    """Every record of the dead-letter topic with its headers decoded."""
    if dlq not in kafka.admin.list_topics(timeout=10).topics:
        return []
    out = []
    for m in kafka.read_all(dlq, expected, timeout=60):
        headers = {k: v.decode() for k, v in (m.headers() or [])}
        out.append(
            {
                "key": m.key(),
                "value": m.value(),
                "headers": headers,
                "kind": headers.get(H_KIND),
                "reason": headers.get(H_REASON),
            }
        )
    return out


# -- a broker of our own -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[Kafka]:
    """A broker only this module uses, so that stopping it disturbs no other test."""
    from kafka_broker import Broker  # deploy/local, put on sys.path by tests/conftest.py

    broker = Broker()
    broker.start()
    try:
        yield Kafka(broker.bootstrap, broker)
    finally:
        broker.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
