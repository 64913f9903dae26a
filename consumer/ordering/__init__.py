"""Event-time order across partitions, for topics not keyed by user; duplicate merges.

Kafka orders one partition only. When one user's events come from several partitions (a
producer that does not key by user: Segment's Kafka destination writes round robin), the
sink's per-user order, which is its consume order, is no longer the order the events happened
in. An order sits in front of the planner (and of a backfill's held users) and hands ops on in
event-time order (the event's ``timestamp``, else ``originalTimestamp``, else the Kafka
record's timestamp, else when it was read; ties: the order they were read in):

* :mod:`.queues`: the ops waiting and the k-way merge both orders share;
* :mod:`.exact`: a backfill's exact order (``--until-end``), and whether a topic is keyed by
  user;
* :mod:`.window`: a live sink's window for users seen on several partitions;
* :mod:`.order`: :class:`EventOrder`, which builds one or the other;
* :mod:`.repeats`: merges repeating a ``messageId``;
* :mod:`.pending`: the live intake's side of the window.

No I/O and no threads: the loop's thread owns it; time comes from the ``clock`` argument.
"""

from .exact import KEYED_AFTER, ExactOrder
from .order import EventOrder
from .pending import PendingOrder
from .queues import REMEMBERED, event_time, users_of
from .repeats import RecentIds
from .window import WindowOrder

__all__ = [
    "KEYED_AFTER",
    "REMEMBERED",
    "EventOrder",
    "ExactOrder",
    "PendingOrder",
    "RecentIds",
    "WindowOrder",
    "event_time",
    "users_of",
]
