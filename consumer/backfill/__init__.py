"""A backfill (``--until-end``) as a stage of its own: it reads ahead, folds each user's events
and sends each user once.

* :mod:`~consumer.backfill.stage`: :class:`BackfillStage`, the :class:`~consumer.stage.Stage`;
* :mod:`~consumer.backfill.focus`: which partitions it reads, and whether plans wait;
* :mod:`~consumer.backfill.backlog` and :mod:`~consumer.backfill.held`: the users' folded state
  and the offsets it owes;
* :mod:`~consumer.backfill.spill`: that state on disk past the memory budget;
* :mod:`~consumer.backfill.memory`: the budget, and memory handed back to the system;
* :mod:`~consumer.backfill.targets`: where it starts and ends, and whether it got there.
"""

from .stage import BackfillStage
from .targets import reached, read_targets

__all__ = ["BackfillStage", "reached", "read_targets"]
