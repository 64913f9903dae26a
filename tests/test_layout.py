"""The layout rules the code relies on: I/O libraries only at the edges, and the emulator and
the sink independent of each other."""

from __future__ import annotations

import ast
from pathlib import Path

import consumer

PACKAGE = Path(consumer.__file__).parent

#: Third-party I/O library -> the sink modules allowed to import it at run time.
EDGES = {
    "confluent_kafka": {"source.py", "deadletter.py", "demo.py", "avro.py", "repartition.py"},
    "httpx": {"knock.py", "demo.py"},
}


def imports(path: Path) -> set[str]:
    """Top-level names imported anywhere in ``path``, type-checking-only imports included:
    a type that names a Kafka message is the message travelling past the edge."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_io_libraries_are_imported_only_at_the_edges():
    for path in PACKAGE.glob("*.py"):
        imported = imports(path)
        for lib, allowed in EDGES.items():
            if lib in imported:
                assert path.name in allowed, f"{path.name} imports {lib}"


def test_the_sink_never_imports_the_emulator_outside_the_cli_and_demo():
    for path in PACKAGE.glob("*.py"):
        if path.name in {"cli.py", "demo.py"}:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "emulator" not in (node.module or ""), f"{path.name} imports the emulator"
