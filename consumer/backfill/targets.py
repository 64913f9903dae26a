"""Where a backfill starts and ends (:func:`read_targets`), and whether it got there
(:func:`reached`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..records import Partition, Replay, Source


def read_targets(
    source: Source, topics: Iterable[str], from_beginning: bool, replay: Replay | None = None
) -> tuple[dict[Partition, int], dict[Partition, int]]:
    """``(ends, starts)`` for ``--until-end``: each partition's end target, the high watermark
    seen now (or the replay's stop), and the offset its reading starts from (the replay's
    start, else the group's commit unless ``from_beginning``, and never below the low
    watermark), for the partitions with something left to read between the two: of the
    replay's worker's share only, when it names a worker."""
    marks = source.end_offsets(topics)
    if replay is not None and replay.worker is not None:
        marks = {tp: marks[tp] for tp in replay.worker.owns(marks)}
    start = {} if from_beginning else source.committed(marks)
    if replay is not None:
        start.update(source.start_offsets())
        stops = source.stop_offsets()
        marks = {tp: (lo, min(hi, stops.get(tp, hi))) for tp, (lo, hi) in marks.items()}
    starts = {tp: max(lo, start.get(tp, 0)) for tp, (lo, _) in marks.items()}
    ends = {tp: hi for tp, (_, hi) in marks.items() if hi > starts[tp]}
    return ends, {tp: starts[tp] for tp in ends}


def reached(
    ends: dict[Partition, int],
    committed: dict[Partition, int],
    source: Source,
    busy: Callable[[], bool],
    held: Callable[[], bool] | None = None,
) -> bool:
    """Whether every end target is committed. ``busy``: whether events are still pending,
    queued or in flight; ``held``: whether held users are still to be sent (both asked only
    when some target is not committed)."""
    short = [tp for tp, hi in ends.items() if committed.get(tp, -1) < hi]
    if not short:
        return True
    # A transactional topic (repartition writes one) ends in a commit marker, never
    # delivered nor tracked: read past it with nothing left to apply is the end too. Held
    # users hold no tracked offset: without them, a backfill read to its end before it sent
    # anyone would end there, having applied nothing.
    if busy() or (held is not None and held()):
        return False
    positions = source.positions(short)
    return all(positions.get(tp, -1) >= ends[tp] for tp in short)
