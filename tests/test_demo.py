"""``knock-sink demo`` on the real broker: it prints its own lines and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_demo_prints_only_its_own_output(kafka):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOCK_", "KAFKA_"))}
    demo = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "demo"],
        env={**env, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    # The sink's warnings (its two dead letters among them) and librdkafka's lines used to
    # come out raw on stderr, through logging's last-resort handler.
    assert demo.stderr == ""
    steps = [line.split()[0] for line in demo.stdout.splitlines() if line[:2] in ("1.", "4.")]
    assert steps == ["1.", "4."]
    assert "2 dead-lettered" in demo.stdout
    assert "3 Knock users, read back from GET /v1/users" in demo.stdout
