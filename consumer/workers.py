"""``backfill --workers N``: one backfill in N processes on this machine, worker ``I/N`` each.

Each worker is the process ``backfill --worker I/N`` would be (see
:class:`~consumer.records.Worker`): a fixed share of the partitions, assigned by hand, its own
held users and commits under the one group this process picks. They are processes, not
threads, because the per-event path is Python and holds the interpreter's lock; they pace to one
Knock budget by taking turns on the wall clock as a group's members do
(:class:`~consumer.pacing.Slots`), each owning the turns of its partitions, so under Knock's
limits N workers take a little longer than one (the turns' cost: 25.1 s for two against 20.8 s
for one, docs/backfills.md#workers), and without limits (a local Knock, or a backfill bound by
decoding) up to N times less (1.59 times for two on 2 cores, bench case 12).

This process only starts them, forwards SIGTERM/SIGINT (each drains, commits and stops as a
lone backfill does), and prints one summary: every worker's, and the totals. Its exit code is
the most serious of theirs: 1 (a worker failed unexpectedly or was killed) over 3 (Knock or the
registry refused the configuration) over 2 (a bad setting) over 4 (stopped before its end);
0 when every worker reached its end. What a worker committed stands whatever the others did:
run the same command with the same ``--group-id`` (printed) to resume, or one worker alone with
``--worker I/N``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
from collections.abc import Callable
from typing import Any

from .errors import ConfigError
from .records import Worker

log = logging.getLogger("knock_sink.workers")

#: Exit codes from most to least serious (see the module docstring).
SERIOUS = (1, 3, 2, 4)
#: Seconds between two looks at the workers while none has reported.
LOOK_EVERY = 0.5

Run = Callable[..., int]


def run_workers(
    args: argparse.Namespace, run: Run, own_group: Callable[[Any], str], settings: Any
) -> int:
    """Start ``args.workers`` workers of the backfill ``args`` describes, wait for all of them,
    print the summary; returns the exit code. ``run`` is the command line's backfill (one
    process), ``own_group`` picks a backfill's group when ``--group-id`` is not given."""
    count = args.workers
    group = args.group_id or own_group(settings)
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no librdkafka threads
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(
            target=_work,
            args=(run, args, Worker(i, count), group, results),
            name=f"knock-sink backfill worker {i}/{count}",
        )
        for i in range(count)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes, outs = _collect(procs, results)
    for proc in procs:
        proc.join()
    print(json.dumps(combine(group, outs), sort_keys=True))
    failed = [i for i, code in codes.items() if code]
    for i in failed:
        print(
            f"knock-sink: worker {i}/{count} exited {codes[i]}; what every worker committed "
            f"stands: run it again with --group-id {group} (and --workers {count}, or "
            f"--worker {i}/{count} for this one alone) to resume",
            file=sys.stderr,
        )
    return worst(codes.values())


def _work(run: Run, args: argparse.Namespace, worker: Worker, group: str, results: Any) -> None:
    """One worker process: the backfill of its share; its exit code and summary to ``results``."""
    out: list[dict[str, Any]] = []
    try:
        code = run(args, backfill=True, worker=worker, group=group, emit=out.append)
    except ConfigError as exc:
        print(f"knock-sink: worker {worker}: {exc}", file=sys.stderr)
        code = 2
    results.put((worker.index, code, out[0] if out else None))
    sys.exit(code)


def _collect(
    procs: list[Any], results: Any
) -> tuple[dict[int, int], dict[int, dict[str, Any] | None]]:
    """Each worker's exit code and summary, as they report; a worker that died without
    reporting (killed) counts as exit 1 with no summary."""
    codes: dict[int, int] = {}
    outs: dict[int, dict[str, Any] | None] = {}
    while len(codes) < len(procs):
        try:
            i, code, out = results.get(timeout=LOOK_EVERY)
        except queue.Empty:
            gone = [i for i, p in enumerate(procs) if i not in codes and p.exitcode is not None]
            if not gone:
                continue
            # What a worker put before exiting is in the pipe by the time it has exited:
            # read it before counting the worker as silent.
            try:
                while True:
                    i, code, out = results.get_nowait()
                    codes[i], outs[i] = code, out
            except queue.Empty:
                pass
            for i in gone:
                if i not in codes:
                    log.error("worker %d exited %s without a summary", i, procs[i].exitcode)
                    codes[i], outs[i] = 1, None
            continue
        codes[i], outs[i] = code, out
    return codes, outs


def worst(codes: Any) -> int:
    """The most serious of the workers' exit codes (0 when all are 0); a code of none of the
    kinds above (a signal's) counts as 1."""
    seen = {c if c in SERIOUS or c == 0 else 1 for c in codes}
    return next((c for c in SERIOUS if c in seen), 0)


def combine(group: str, outs: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """One summary for the whole backfill: the workers' own (by index) and their totals
    (counts added, ``committed`` positions merged, ``complete`` only when every worker's is)."""
    total: dict[str, Any] = {}
    for out in outs.values():
        for key, value in (out or {}).items():
            if key in ("group_id", "worker", "complete"):
                continue
            total[key] = _add(total.get(key), value)
    reports = [outs[i] for i in sorted(outs)]
    total.update(
        group_id=group,
        complete=all(out is not None and out.get("complete") is True for out in reports),
        workers=reports,
    )
    return total


def _add(a: Any, b: Any) -> Any:
    """Counts add up, dicts merge key by key; anything else keeps the first value seen."""
    if a is None:
        return b
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k), b.get(k)) for k in a.keys() | b.keys()}
    return a
