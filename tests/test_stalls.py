"""Stalls (pure logic): a partition waiting for the registry keeps its records in order,
retries on the backoff's schedule, resumes when they are through, and commits nothing past
the first waiting record."""

from __future__ import annotations

from consumer.errors import FatalRegistryError, RegistryUnavailable
from consumer.records import Record
from consumer.retry import Backoff
from consumer.stalls import Stalls
from consumer.tracker import OffsetTracker

A, B = ("t", 0), ("t", 1)


def setup() -> tuple[Stalls, OffsetTracker, list[float], list[tuple[str, list]], list[int]]:
    now = [0.0]
    calls: list[tuple[str, list]] = []
    waits: list[int] = []
    stalls = Stalls(
        Backoff(base=1.0, cap=4.0, rng=lambda: 0.999),
        clock=lambda: now[0],
        pause=lambda tps: calls.append(("pause", tps)),
        resume=lambda tps: calls.append(("resume", tps)),
        on_wait=lambda: waits.append(1),
    )
    tracker = OffsetTracker()
    tracker.add([A, B])
    return stalls, tracker, now, calls, waits


def test_a_stalled_partition_keeps_its_records_in_order_until_the_registry_answers():
    stalls, tracker, now, calls, waits = setup()
    handles = {}
    for off in range(3):
        handles[off] = tracker.track(A, off)
    stalls.stall(Record("t", 0, 0), handles[0], RegistryUnavailable("down"))
    for off in (1, 2):
        assert stalls.holds(A)
        stalls.keep(Record("t", 0, off), handles[off])
    other = tracker.track(B, 0)
    other.release()
    assert not stalls.holds(B) and calls == [("pause", [A])]
    assert tracker.committable() == {B: 1}  # nothing of A: its first record waits

    seen: list[int] = []
    registry_up = [False]

    def process(rec: Record, handle) -> None:
        if not registry_up[0]:
            raise RegistryUnavailable("still down")
        seen.append(rec.offset)
        handle.release()

    stalls.retry(process)  # too early: the backoff has not elapsed
    assert seen == [] and len(waits) == 1
    now[0] = 1.0
    stalls.retry(process)  # due, still down: one attempt, the next one later
    assert seen == [] and len(waits) == 2 and len(stalls) == 3
    now[0] = 2.5
    stalls.retry(process)
    assert len(waits) == 2  # not yet: the delay doubled
    registry_up[0] = True
    now[0] = 10.0
    stalls.retry(process)
    assert seen == [0, 1, 2] and len(stalls) == 0 and not stalls.holds(A)
    assert calls[-1] == ("resume", [A])
    assert tracker.committable() == {A: 3, B: 1}


def test_dropped_partitions_forget_their_records_and_a_refusal_is_fatal():
    stalls, tracker, now, _calls, _waits = setup()
    stalls.stall(Record("t", 0, 0), tracker.track(A, 0), RegistryUnavailable("down"))
    stalls.drop([A])
    assert not stalls.holds(A) and len(stalls) == 0
    refused = FatalRegistryError("401", status=401)
    stalls.stall(Record("t", 1, 0), tracker.track(B, 0), refused)
    assert stalls.fatal is refused and stalls.holds(B)
    now[0] = 100.0
    stalls.retry(lambda rec, h: (_ for _ in ()).throw(AssertionError("no retry after a refusal")))
    assert tracker.committable() == {}
