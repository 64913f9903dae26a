"""The chaos report: one JSON file per case under ``bench/results/``, and a markdown table.

Each case calls :func:`write` with its figures; the file ``chaos-<case>.json`` holds the latest
run (shortened or full), ``chaos-<case>.<mode>.json`` keeps one per mode so the table can show
both. ``python -m tests.chaos.report`` prints the table from whatever files exist.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
CASES = ["faults", "sigkill", "rebalance", "broker-restart", "poison"]

#: How "duplicates sent" is counted, stated in every file.
DUPLICATES = (
    "identify entries the emulator accepted (stats identify_entries, 2xx bulk/single calls only) "
    "minus the valid identify events of the stream: every event of the generated streams carries "
    "an object under the same key, which the sink never folds, so a fault-free run needs exactly "
    "one entry per valid event"
)


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {sys.version.split()[0]}"


def write(case: str, mode: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Write the case's figures (JSON) and print them; returns the record written."""
    record = {
        "case": case,
        "mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "duplicates_definition": DUPLICATES,
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, sort_keys=False)
    (RESULTS / f"chaos-{case}.json").write_text(text + "\n")
    (RESULTS / f"chaos-{case}.{mode}.json").write_text(text + "\n")
    print(f"\n[chaos report] {case} ({mode})\n{text}", flush=True)
    return record


def _kinds(dead: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(dead.items())) or "0"


def _secs(value: Any) -> str:
    return "—" if value is None else f"{value:.1f} s"


def table(records: list[dict[str, Any]]) -> str:
    head = (
        "| case | size | events in | users correct | dead-lettered (by reason) | duplicates sent "
        "| Knock traffic resumed | commits resumed | everything committed | total |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in records:
        rows.append(
            f"| {r['title']} | {r['mode']} | {r['events_in']:,} "
            f"| {r['users_correct']:,} / {r['users_expected']:,} | {_kinds(r['dead_lettered'])} "
            f"| {r['duplicates_sent']:,} | {_secs(r.get('knock_resume_s'))} | {_secs(r.get('resume_s'))} "
            f"| {_secs(r.get('recover_s'))} | {_secs(r['total_s'])} |"
        )
    return head + "\n".join(rows) + "\n"


def load(mode: str | None = None) -> list[dict[str, Any]]:
    out = []
    for mode_ in [mode] if mode else ["short", "full"]:
        for case in CASES:
            path = RESULTS / f"chaos-{case}.{mode_}.json"
            if path.exists():
                out.append(json.loads(path.read_text()))
    return out


if __name__ == "__main__":
    records = load(sys.argv[1] if len(sys.argv) > 1 else None)
    print(table(records) if records else "no chaos results under bench/results/")
