"""Smoke test of the benchmark (``make bench``): it runs end to end at ``--scale small`` and its
JSON has every case with positive figures. Not a speed check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Kafka

pytestmark = pytest.mark.slow


def test_bench_small_runs_every_case(kafka: Kafka, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--scale",
            "small",
            "--bootstrap",
            kafka.bootstrap,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=320,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["case"]: r for r in report["rows"]}
    assert set(rows) >= {
        "ceiling",
        "decode",
        "sink",
        "naive",
        "limits",
        "backlog",
        "scale-1",
        "scale-2",
        "live-100",
        "spill",
        "txn-plain",
        "txn",
        "product-off",
        "product-on",
        "workers-1",
        "workers-2",
    }
    live = rows["live-100"]
    # Every user produced reached Knock, each with a latency read back from the emulator.
    assert live["applied"] == live["events"] and live["max_s"] >= live["p99_s"] >= live["p50_s"] > 0
    for case, row in rows.items():
        assert row["events"] > 0, case
        for key in ("events_per_s", "cpu_s_per_m_events", "peak_rss_mb"):
            assert row[key] > 0, (case, key)
        if case not in ("ceiling", "decode"):
            assert row["knock_calls"] > 0 and row["users_per_s"] > 0, case
    assert rows["workers-2"]["workers"] == 2 and rows["workers-2"]["cores"] > 0
    for case in ("workers-1", "workers-2"):
        # Each user of the deep-history topic sent once, by one process or split over two.
        assert rows[case]["users_sent"] == rows[case]["distinct_users"] > 0, case
    for case in ("product-off", "product-on"):
        # Every user ends at its last version, whatever was left out as known.
        assert rows[case]["exact_users"] == rows[case]["users"] > 0, case
    for case in ("limits", "spill"):
        assert rows[case]["lower_bound_s"] > 0 and rows[case]["time_over_bound"] > 0, case
    for case in ("group-1", "group-3"):
        # Timed from the first Knock call too, which comes after the processes start.
        assert 0 < rows[case]["from_first_call_s"] < rows[case]["seconds"], case
        assert rows[case]["entries_per_user"] >= 1, case
    assert set(report["ratios"]) >= {
        "sink_over_ceiling",
        "sink_over_naive",
        "backfill_over_bound",
        "backlog_peak_rss_mb",
        "sink_over_decode",
        "spill_peak_rss_mb",
        "txn_over_plain",
        "product_entries_per_change",
        "workers_2_over_1",
        "group_3_over_1_from_first_call",
        "group_1_over_bound_from_first_call",
    }
    assert "knock-sink benchmark" in proc.stdout
