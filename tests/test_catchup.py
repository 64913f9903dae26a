"""Catching up (``consumer.catchup``) on a fake consumer: which partitions hold their users,
which fetch, and when every hold is let go. Pure logic; the same on a real broker is in
``tests/test_sink.py`` (each user of a backlog sent once)."""

from __future__ import annotations

from consumer.catchup import LOOK_EVERY, VERDICT_WAIT, CatchUp
from consumer.records import Partition

A: Partition = ("t", 0)
B: Partition = ("t", 1)
C: Partition = ("t", 2)


class Consumer:
    """Positions and cached high watermarks, set by the test; what fetching was held back."""

    def __init__(self) -> None:
        self.at: dict[Partition, int] = {}
        self.hi: dict[Partition, int] = {}
        self.paused: set[Partition] = set()

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        return {tp: self.at[tp] for tp in tps if tp in self.at}

    def highs(self) -> dict[Partition, int]:
        return dict(self.hi)

    def behind(self, pending: int = 1_000) -> CatchUp:
        """A and B 900 and 800 events behind, assigned and judged: both catching up."""
        self.at.update({A: 0, B: 0})
        self.hi.update({A: 900, B: 800})
        cu = self.catch_up(pending=pending)
        cu.assigned([A, B])
        cu.step(0.0, pending=0)
        return cu

    def catch_up(self, lag: int = 100, pending: int = 1_000) -> CatchUp:
        return CatchUp(
            lag,
            pending,
            positions=self.positions,
            highs=self.highs,
            pause=self.paused.update,
            resume=self.paused.difference_update,
        )


def test_a_new_partition_holds_until_its_verdict_then_until_read_to_its_end():
    c = Consumer()
    cu = c.catch_up()
    cu.assigned([A, B])
    assert cu.held == {A, B}  # no high watermark yet: its first records must not go alone
    cu.step(0.1, pending=0)
    assert cu.held == {A, B}
    c.at.update({A: 0, B: 950})
    c.hi.update({A: 500, B: 1_000})
    cu.step(0.2, pending=0)
    assert cu.held == {A}  # 500 behind holds; 50 behind (less than the lag) is live
    c.hi[A] = 600  # what arrives while catching up is not waited for
    c.at[A] = 499
    cu.step(0.3, pending=0)
    assert cu.held == {A}
    c.at[A] = 500
    cu.step(0.4, pending=0)
    assert cu.held == frozenset()


def test_a_partition_with_nothing_read_waits_for_its_verdict_and_is_not_counted():
    c = Consumer()
    c.hi[A] = 500  # fetched, but its records not delivered yet (other partitions' first)
    cu = c.catch_up()
    cu.assigned([A])
    cu.step(60.0, pending=0)
    assert cu.held == {A} and cu.catching_up == 0
    c.at[A] = 10
    cu.step(60.1, pending=0)
    assert cu.held == {A} and cu.catching_up == 1


def test_lag_that_builds_on_a_live_partition_starts_a_hold_at_the_next_look():
    c = Consumer()
    c.at[A], c.hi[A] = 10, 10
    cu = c.catch_up()
    cu.assigned([A])
    cu.step(0.0, pending=0)
    assert cu.held == frozenset()
    c.hi[A] = 500
    cu.step(LOOK_EVERY / 2, pending=0)
    assert cu.held == frozenset()  # not looked at yet
    cu.step(LOOK_EVERY, pending=0)
    assert cu.held == {A}


def test_partitions_catching_up_are_read_one_at_a_time_least_left_first():
    c = Consumer()
    c.at.update({A: 0, B: 0, C: 0})
    c.hi.update({A: 900, B: 300, C: 5})
    cu = c.catch_up()
    cu.assigned([A, B, C])
    cu.step(0.0, pending=0)
    assert cu.held == {A, B}
    assert c.paused == {A}  # B has less left; C is live and fetches
    c.at[B] = 200
    c.hi[A] = 100_000  # the one read keeps the focus until it is caught up
    cu.step(0.1, pending=0)
    assert c.paused == {A}
    c.at[B] = 300
    cu.step(0.2, pending=0)
    assert cu.held == {A} and c.paused == set()


def test_too_much_held_lets_every_hold_go_and_starts_none_until_half_is_resolved():
    c = Consumer()
    cu = c.behind(pending=1_000)
    assert cu.held == {A, B} and c.paused == {A}
    cu.step(0.1, pending=1_000)
    assert cu.held == frozenset() and c.paused == set()
    cu.step(5.0, pending=600)
    assert cu.held == frozenset()  # still behind, but too much is unresolved
    cu.step(10.0, pending=500)
    assert cu.held == {A, B}


def test_a_partition_that_leaves_is_neither_held_nor_paused():
    c = Consumer()
    cu = c.behind()
    cu.unassigned([A, B])
    assert cu.held == frozenset()
    cu.step(0.1, pending=0)
    assert c.paused == {A}, "a partition that left is not resumed: the fetch control forgot it"


def test_release_all_resumes_every_partition():
    c = Consumer()
    cu = c.behind()
    cu.release_all()
    assert cu.held == frozenset() and c.paused == set()


def test_a_partition_read_from_without_a_high_watermark_is_live_after_the_verdict_wait():
    # Found by the chaos suite: a broker restart forgets the cached high watermark, and with
    # fetching paused by the partition's own held records, none comes.
    c = Consumer()
    c.at[A] = 300
    cu = c.catch_up()
    cu.assigned([A])
    cu.step(0.0, pending=0)
    cu.step(VERDICT_WAIT - 0.1, pending=0)
    assert cu.held == {A}
    cu.step(VERDICT_WAIT, pending=0)
    assert cu.held == frozenset()
