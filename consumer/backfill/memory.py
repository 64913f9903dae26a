"""A backfill's memory: what of its budget its held users may take, and handing freed memory
back to the system.

The budget (``sink.backfill_memory_mb``) is the process's; the held users' share of it
(:class:`HeldShare`) is what :class:`~consumer.backfill.backlog.Backlog` spills past. No clock;
reads the process's resident size.
"""

from __future__ import annotations

import ctypes
import resource
import sys
from collections.abc import Callable
from itertools import islice
from typing import Final

from .held import Held, size

#: Seconds between two hand-backs of freed memory to the system during a backfill (see
#: :func:`give_back_memory`).
TRIM_EVERY: Final = 5.0
#: Users sampled to estimate the average size of a held user.
SAMPLE: Final = 64
#: Budget checks between two samples of that average (see :meth:`Sizes.over`).
RESAMPLE_EVERY: Final = 16


class Sizes:
    """The estimated bytes of the users held in memory. Their size is sampled evenly across all
    of them (measuring every dict would cost more than folding): the oldest or the newest alone
    are no sample, a backfill's first batch holds users of partitions it reads last, one event
    each. The walk is still one of all the users in memory, asked after every batch, so the
    average is sampled every :data:`RESAMPLE_EVERY` checks, and after :meth:`stale`; in
    between, the count times that average."""

    def __init__(self) -> None:
        # The last sampled average size of a user in memory, and checks left before the next.
        self._average = 0.0
        self._checks = 0

    def over(self, users: dict[str, Held], budget: int) -> bool:
        """Whether ``users`` (not empty) are estimated past ``budget`` bytes."""
        self._checks -= 1
        if self._checks < 0:
            self._checks = RESAMPLE_EVERY - 1
            self._average = self.estimate(users)[0] / len(users)
        return len(users) * self._average > budget

    def stale(self) -> None:
        """The users changed in bulk (a spill, a packing): sample again at the next check."""
        self._checks = 0

    @staticmethod
    def estimate(users: dict[str, Held]) -> tuple[float, float]:
        """Estimated bytes of ``users`` (not empty), and of one of them not packed, from an even
        sample of them."""
        sample = list(islice(users.values(), 0, None, max(1, len(users) // SAMPLE)))
        sizes = [size(h.props) for h in sample]
        unpacked = [n for n, h in zip(sizes, sample, strict=True) if h.props.__class__ is not bytes]  # type: ignore[comparison-overlap]  # packed: see Backlog.compact
        average = sum(sizes) / len(sizes)
        return len(users) * average, sum(unpacked) / len(unpacked) if unpacked else average


def held_budget(budget: int, prefetch: int, rss: int) -> int:
    """What of a backfill's memory budget (``sink.backfill_memory_mb``, in bytes) its held
    users may take: the budget is the process's, so what the process holds before it holds
    anyone comes off first: its resident size ``rss`` (the interpreter, its libraries and
    the Kafka clients) and twice librdkafka's prefetch allowance
    ``prefetch`` (measured: the fetch buffers live beside the queued messages). At least a
    quarter of the budget is left to them, so a budget below the process's own size still
    holds some users between spills."""
    return max(budget - rss - 2 * prefetch, budget // 4)


class HeldShare:
    """What of a backfill's memory budget (``sink.backfill_memory_mb``, in bytes) its held users
    may take now: :func:`held_budget` at the start, then less by however far the process's
    resident size (``read``) has been seen past the budget, never below a quarter of it.

    Why: the held users' size is an estimate of them alone. Beside them the process holds
    users out for sending and their request bodies, the allocator's free blocks, caches, which
    the estimate does not see. Lowered only, never raised back: freed memory stays with the process (the allocator keeps
    most of it), so its resident size does not come down as users spill, and a share raised
    again would chase it.
    """

    def __init__(self, budget: int, prefetch: int, read: Callable[[], int] | None = None) -> None:
        self._read = read or resident_bytes
        self._budget = budget
        self._start = held_budget(budget, prefetch, self._read())
        self._floor = budget // 4
        self._peak = budget

    def now(self) -> int:
        """The share now, after reading the resident size once."""
        rss = self._read()
        if rss > self._peak:
            self._peak = rss
        return max(self._start - (self._peak - self._budget), self._floor)


def give_back_memory() -> None:
    """Hand the allocator's free pages back to the system: glibc's ``malloc_trim(0)``, where
    the C library has one (elsewhere nothing). Why: a backfill frees each user's state as it is
    sent, but glibc keeps freed chunks in its arenas (one per allocating thread: the workers
    build every request body) and hands back only what lies at the top of an arena, so the
    resident size stays at its high-water mark."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back this way
        return None


_malloc_trim = _find_malloc_trim()


def resident_bytes() -> int:
    """This process's resident size now: ``/proc/self/statm`` where there is one. Elsewhere
    the peak so far (``ru_maxrss``); not on Linux, where that peak is carried over fork and
    exec from the parent (a child of a large process would see its parent's size)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak << 10  # macOS: bytes; else KiB
