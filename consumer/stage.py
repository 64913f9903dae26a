"""The stage contract: what the loop asks of the stage that takes in records, and what travels
with each op so that its offsets can be committed.

Two stages implement :class:`Stage`: the live intake (:class:`consumer.intake.Intake`: each
event's ops go on as they are read) and a backfill (:class:`consumer.backfill.BackfillStage`:
events fold into their users' held state, each user sent once). The loop
(:mod:`consumer.sink`) picks one at start and calls the same verbs whichever it is, as Arroyo's
processor drives any ``ProcessingStrategy``.

Each op reaches the planner with a :class:`Committable`: the offsets it stands for. Its last
:meth:`~Committable.release` is what lets a commit pass them; the loop commits only what
:meth:`Stage.committable` vouches for, so no stage commits anything itself.

Every verb runs on the loop's thread; none is thread-safe.
"""

from __future__ import annotations

from typing import Protocol

from .errors import FatalRegistryError
from .records import Partition, Record


class Committable(Protocol):
    """The offsets one op stands for: a tracker :class:`~consumer.tracker.Handle` for one event
    (:class:`consumer.handles.EventHandle` with its freshness stamps), a backfill's
    :class:`~consumer.backfill.held.HeldHandle` for all of a user's folded events.

    Whoever takes on work for it :meth:`hold` s it and :meth:`release` s it when done (applied in
    Knock, or confirmed in the dead-letter topic); the last release resolves its offsets.
    """

    @property
    def partition(self) -> Partition:
        """The partition of its earliest offset."""
        ...

    @property
    def offset(self) -> int:
        """Its earliest offset."""
        ...

    @property
    def current(self) -> bool:
        """Whether the offsets are still this consumer's to resolve (False once their partition
        was revoked, lost or rewound: the events will be read again, and a retry is pointless)."""
        ...

    @property
    def events(self) -> int:
        """How many consumed events it stands for (the applied count)."""
        ...

    @property
    def seen(self) -> float:
        """Wall time the sink read its (first) event, 0.0 when not stamped: for the freshness
        metrics (:mod:`consumer.freshness`), which leave unstamped ones out."""
        ...

    @property
    def kafka_ms(self) -> int | None:
        """The Kafka record's timestamp (ms) of its (first) event, or ``None``."""
        ...

    @property
    def event_ts(self) -> object:
        """Its (first) event's raw ``timestamp`` (else ``originalTimestamp``), unparsed."""
        ...

    def hold(self) -> None: ...

    def release(self) -> bool:
        """Drop one hold; True when that resolved its offsets.

        :raises ValueError: released more often than held.
        """
        ...

    def claim_dead_letter(self) -> bool:
        """True the first time it is asked while current: one dead-letter record for it."""
        ...

    def record(self) -> Record | None:
        """What to dead-letter when Knock rejects it: ``None`` to read the original back from
        its topic (one event), else a record standing for all it folds."""
        ...


class Stage(Protocol):
    """Records in, ops handed to the planner (:class:`~consumer.dispatch.Dispatch`), each with
    its :class:`Committable`; or records parked with the dead letters.

    The loop calls, each turn: :meth:`poll`, :meth:`submit` with what it fetched, (outcomes
    collected), :meth:`feed`, :meth:`holds_back` before a plan is cut, then
    :meth:`committable` / :meth:`mark_committed` when it commits. On a revoke, loss or rewind
    :meth:`forget`; when stopping :meth:`flush`, and at the end :meth:`close`.
    """

    @property
    def fatal(self) -> FatalRegistryError | None:
        """Set once the schema registry refused the configuration: the loop stops fetching,
        applies what was mapped before, and raises it."""
        ...

    def poll(self) -> None:
        """Once a turn before fetching: work that waited for time (records waiting for the
        registry). Must not block: what is not due stays for a later turn."""
        ...

    def submit(self, records: list[Record]) -> None:
        """Take in a fetched batch, in order. A return does *not* mean the records' ops reached
        the planner (they may wait for their event-time turn, for the registry, or fold into a
        held user), let alone Knock. It blocks only where a stage must not read further (a
        backfill waiting for the registry, until the loop's stop)."""
        ...

    def feed(self) -> None:
        """Once a turn, after outcomes are taken in and before a plan is cut: hand the planner
        what is due. Must not block. A return does *not* mean anything was handed on."""
        ...

    def holds_back(self, now: float) -> bool:
        """Whether a plan that is due must still wait (a backfill reading ahead). Must not
        block, and changes nothing."""
        ...

    def committable(self) -> dict[Partition, int]:
        """Commit positions that moved since :meth:`mark_committed`: each one past only what
        was applied or confirmed dead-lettered, or never delivered (transaction markers and
        aborted records, below the consumer's position). Does *not* commit, and must not
        block (a query of a backfill's spill file at most)."""
        ...

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        """Kafka accepted ``positions``."""
        ...

    def forget(self, gone: set[Partition]) -> bool:
        """``gone`` left this consumer (revoked, lost or rewound): drop what is held for them.
        True when the run must stop (the loop stops and drops every queued op): what is held
        cannot be split back into events."""
        ...

    def flush(self) -> None:
        """The loop stops: what waits for its turn goes on now, and what comes after goes on as
        it is read (the loop says it at every turn of its drain). Does *not* wait for Knock."""
        ...

    def close(self) -> None:
        """Release what the stage holds outside the process (a spill file). Must not block."""
        ...


class NotStarted:
    """The stage before the loop picks one: nothing taken in, nothing to commit, nothing to
    forget (a consumer closed before the run began)."""

    fatal: FatalRegistryError | None = None

    def poll(self) -> None:
        pass

    def submit(self, records: list[Record]) -> None:
        raise RuntimeError("records submitted before the loop picked its stage")

    def feed(self) -> None:
        pass

    def holds_back(self, now: float) -> bool:
        return False

    def committable(self) -> dict[Partition, int]:
        return {}

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        pass

    def forget(self, gone: set[Partition]) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
