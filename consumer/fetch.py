"""One fetch control: which partitions the consumer fetches, and why the others wait.

Several stages hold fetching back, each for its own reason: backpressure and a drain hold every
partition; a partition waiting for the Schema Registry, or far ahead in the event-time order,
holds itself; a backfill reading ahead keeps only the partition it reads. Each says so here,
under its reason, and releases only what it held; :class:`FetchControl` applies the union to the
consumer (:meth:`~consumer.records.Source.pause_partitions`,
:meth:`~consumer.records.Source.resume_partitions`). A partition fetches when no reason holds
it, so no stage can undo another's hold, and none has to say its own again each turn.

No I/O but those two calls, no clock; the loop's thread owns it: not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .records import Partition, Source

#: Called with the partitions to hold back or let go, under a reason bound in advance.
Holder = Callable[[list[Partition]], None]


class FetchControl:
    """The partitions held back from fetching, each with its reasons.

    :param source: the consumer (bound later with :meth:`bind` when it does not exist yet).
    """

    def __init__(self, source: Source | None = None) -> None:
        self._source = source
        self._assigned: set[Partition] = set()
        #: Reasons holding every assigned partition back.
        self._all: set[str] = set()
        #: Reasons holding some partitions back, per partition.
        self._some: dict[Partition, set[str]] = {}
        #: Per reason, the only partitions it lets fetch.
        self._only: dict[str, set[Partition]] = {}
        #: What the consumer was told: the partitions paused there.
        self._paused: set[Partition] = set()

    def bind(self, source: Source) -> None:
        self._source = source

    @property
    def paused(self) -> bool:
        """Whether some reason holds every partition back (backpressure, a drain)."""
        return bool(self._all)

    def holds(self, tp: Partition) -> bool:
        """Whether any reason holds ``tp`` back."""
        return bool(self._all or self._some.get(tp)) or any(
            tp not in keep for keep in self._only.values()
        )

    # -- what the stages say -------------------------------------------------------------------

    def hold(self, reason: str, tps: Iterable[Partition]) -> None:
        """Hold ``tps`` back for ``reason`` (kept until :meth:`release` d for it, or the
        partition leaves)."""
        tps = list(tps)
        for tp in tps:
            self._some.setdefault(tp, set()).add(reason)
        self._apply(tps)

    def release(self, reason: str, tps: Iterable[Partition]) -> None:
        """Let ``tps`` go for ``reason``; each fetches again once no other reason holds it."""
        tps = list(tps)
        for tp in tps:
            reasons = self._some.get(tp)
            if reasons is not None:
                reasons.discard(reason)
                if not reasons:
                    del self._some[tp]
        self._apply(tps)

    def hold_all(self, reason: str) -> None:
        """Hold every partition back for ``reason``, those assigned later too."""
        if reason not in self._all:
            self._all.add(reason)
            self._apply(self._assigned)

    def release_all(self, reason: str) -> None:
        if reason in self._all:
            self._all.discard(reason)
            self._apply(self._assigned)

    def only(self, reason: str, keep: set[Partition] | None) -> None:
        """For ``reason``, fetch only from ``keep`` of the assigned partitions (``None``: from
        all again; an empty set: from none)."""
        if keep is None:
            if self._only.pop(reason, None) is not None:
                self._apply(self._assigned)
            return
        if self._only.get(reason) != keep:
            self._only[reason] = set(keep)
            self._apply(self._assigned)

    def holder(self, reason: str) -> Holder:
        """:meth:`hold` bound to ``reason``: for a stage that pauses through callables."""
        return lambda tps: self.hold(reason, tps)

    def releaser(self, reason: str) -> Holder:
        """:meth:`release` bound to ``reason``."""
        return lambda tps: self.release(reason, tps)

    def whole(self, reason: str) -> Whole:
        """:meth:`hold_all` / :meth:`release_all` bound to ``reason``, as ``pause``/``resume``."""
        return Whole(self, reason)

    # -- what the consumer says ----------------------------------------------------------------

    def assigned(self, tps: Iterable[Partition]) -> None:
        """``tps`` were assigned (and fetch until told otherwise): the holds that cover them
        apply to them now."""
        tps = list(tps)
        self._assigned.update(tps)
        self._apply(tps)

    def unassigned(self, tps: Iterable[Partition]) -> None:
        """``tps`` left (revoked or lost): their own holds go with them (a partition assigned
        again fetches from its commit, unpaused)."""
        for tp in tps:
            self._assigned.discard(tp)
            self._some.pop(tp, None)
            self._paused.discard(tp)

    def _apply(self, tps: Iterable[Partition]) -> None:
        pause: list[Partition] = []
        resume: list[Partition] = []
        for tp in tps:
            if tp not in self._assigned:
                continue
            held = self.holds(tp)
            if held and tp not in self._paused:
                self._paused.add(tp)
                pause.append(tp)
            elif not held and tp in self._paused:
                self._paused.discard(tp)
                resume.append(tp)
        source = self._source
        if source is None:
            return
        if pause:
            source.pause_partitions(sorted(pause))
        if resume:
            source.resume_partitions(sorted(resume))


class Whole:
    """One reason's hold on every partition, with the ``pause``/``resume`` verbs a policy such
    as :class:`~consumer.flow.Backpressure` speaks."""

    __slots__ = ("_fetch", "_reason")

    def __init__(self, fetch: FetchControl, reason: str) -> None:
        self._fetch, self._reason = fetch, reason

    @property
    def paused(self) -> bool:
        return self._reason in self._fetch._all

    def pause(self) -> None:
        self._fetch.hold_all(self._reason)

    def resume(self) -> None:
        self._fetch.release_all(self._reason)
