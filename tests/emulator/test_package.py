"""The public surface, the independence from the sink, and the CLI."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

import consumer.emulator

PACKAGE = Path(consumer.emulator.__file__).parent


def test_exports() -> None:
    assert consumer.emulator.__all__ == ["EmulatorServer", "create_app"]


def test_the_emulator_imports_nothing_from_the_sink() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("consumer") or name.startswith("consumer.emulator"), (
                    f"{path.name} imports {name}"
                )


def test_cli_prints_its_url_serves_and_exits_0_on_sigterm() -> None:
    env = {**os.environ, "KNOCK_API_KEY": "sk_from_env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer.emulator", "--port", "0", "--rate-limits", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "knock-sink emulator listening on http://127.0.0.1:"
        assert line.startswith(prefix) and line[len(prefix) :].isdigit()
        url = line.removeprefix("knock-sink emulator listening on ")
        headers = {"authorization": "Bearer sk_from_env"}
        response = httpx.put(f"{url}/v1/users/u1", json={"name": "x"}, headers=headers, timeout=10)
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        _, stderr = proc.communicate()
        assert "sk_from_env" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_workflows_flag_declares_the_keys_that_exist() -> None:
    import argparse

    from consumer.emulator import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args([]).workflows is None
    raw = parser.parse_args(["--workflows", "welcome, digest,"]).workflows
    assert cli._workflow_keys(raw) == frozenset({"welcome", "digest"})
    assert cli._workflow_keys(None) is None
