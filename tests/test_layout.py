"""The layout rules the code relies on: I/O libraries only at the edges, and the emulator and
the sink independent of each other."""

from __future__ import annotations

import ast
from pathlib import Path

import consumer

PACKAGE = Path(consumer.__file__).parent

#: Third-party I/O library -> the sink modules allowed to import it at run time (paths inside
#: the package; the emulator, a package of its own, is checked apart).
EDGES = {
    "confluent_kafka": {"source.py", "deadletter.py", "demo.py", "avro.py", "repartition.py"},
    "httpx": {"knock.py", "demo.py"},
}


def sink_modules() -> list[Path]:
    """Every module of the sink, subpackages included, but the emulator's."""
    return [
        path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "emulator"
    ]


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
    modules = sink_modules()
    assert any(path.parent.name == "backfill" for path in modules)  # subpackages are scanned
    for path in modules:
        imported = imports(path)
        name = path.relative_to(PACKAGE).as_posix()
        for lib, allowed in EDGES.items():
            if lib in imported:
                assert name in allowed, f"{name} imports {lib}"


def test_the_sink_never_imports_the_emulator_outside_the_cli_and_demo():
    for path in sink_modules():
        name = path.relative_to(PACKAGE).as_posix()
        if name in {"cli.py", "demo.py"}:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "emulator" not in (node.module or ""), f"{name} imports the emulator"


def test_only_the_fetch_control_pauses_the_consumer():
    """Why a partition waits is the fetch control's to know (consumer/fetch.py): a stage that
    paused the consumer itself could be undone by another's resume."""
    for path in sink_modules():
        name = path.relative_to(PACKAGE).as_posix()
        if name in {"fetch.py", "records.py", "source.py"}:
            continue
        text = path.read_text()
        for verb in ("pause_partitions(", "resume_partitions("):
            assert verb not in text, f"{name} calls {verb[:-1]}"


def test_no_module_imports_the_backfill_but_the_loop():
    """The loop picks the stage; nothing else reaches into a backfill."""
    for path in sink_modules():
        name = path.relative_to(PACKAGE).as_posix()
        if name == "sink.py" or name.startswith("backfill/"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert "backfill" not in node.module, f"{name} imports the backfill"
