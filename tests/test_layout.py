"""The layout rules the code relies on: I/O libraries only at the edges, the emulator and the
sink independent of each other, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import consumer

PACKAGE = Path(consumer.__file__).parent

#: Third-party I/O library -> the sink modules allowed to import it at run time (paths inside
#: the package; the emulator, a package of its own, is checked apart).
EDGES = {
    "confluent_kafka": {
        "source.py",
        "deadletter.py",
        "demo.py",
        "avro.py",
        "repartition.py",
        "knownlog.py",
    },
    "httpx": {"knock/transport.py", "demo.py"},
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


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, wherever the import stands (in a function,
    under ``TYPE_CHECKING``): an import moved into a function still ties the two modules."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                submodules = {f"{target}.{a.name}" for a in node.names} & paths.keys()
                # `from . import x` imports the module x, not the package around it.
                deps |= submodules or ({target} & paths.keys())
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("consumer"):
                deps |= {node.module} & paths.keys()
        graph[name] = deps - {name}
    return graph


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_settings_import_nothing_of_the_pipeline():
    # Every stage reads its settings; settings that imported a stage would tie them in a circle.
    assert import_graph()["consumer.config"] <= {"consumer.errors", "consumer.limits"}


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


#: The path an event takes (docs/architecture.md), module by module: a step may use the steps
#: before it, never one after it (a step that reached forward would be called back by what it
#: calls). The loop, the stages and the cross-cutting modules (settings, errors, metrics) are
#: outside the ranking.
PATH_STEPS = [
    {"consumer.source"},
    {"consumer.decode", "consumer.avro"},
    {"consumer.events"},
    {"consumer.mapping", "consumer.actions", "consumer.ops"},
    {"consumer.plan"},
    {"consumer.knock", "consumer.knock.client", "consumer.knock.transport", "consumer.knock.bulk"},
    {"consumer.apply", "consumer.apply_actions", "consumer.outcome", "consumer.deadletter"},
]


def test_no_step_of_the_path_imports_one_after_it():
    graph = import_graph()
    rank = {module: i for i, step in enumerate(PATH_STEPS) for module in step}
    for module, i in rank.items():
        later = {dep for dep in graph[module] if rank.get(dep, -1) > i}
        assert not later, f"{module} imports {sorted(later)}, later in the path"
