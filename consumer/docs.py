"""The reference pages under ``docs/reference/``, generated from the code they describe.

``python -m consumer.docs`` (``make docs``) writes them; ``--check`` only compares and exits 1
naming the pages that differ (``tests/test_docs.py`` does the same). Sources: the settings
model (:mod:`consumer.config`: field docstrings, defaults, constraints; the environment
variables of :data:`~consumer.config.ENVIRONMENT`; the flags of
:data:`~consumer.cli.FLAG_SETTINGS`), the metric declarations (:class:`consumer.metrics.Metrics`,
plus whatever else registers in its registry) and the argparse parsers
(:func:`consumer.cli.build_parser`). A page is a pure function of the code: no dates, no
paths of this machine, no terminal width.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import cli, config
from .metrics import Metrics

#: The commands that read the settings (the emulator and the demo have their own).
SETTINGS_COMMANDS = ("run", "backfill", "validate", "repartition")
ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m consumer.docs"


def _banner(source: str) -> str:
    return f"<!-- Generated from {source} by `{COMMAND}` (make docs): do not edit by hand. -->\n"


def _md(text: str) -> str:
    """reST inline literals and cross-references as Markdown, one line, table-safe."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`").replace("->", "→")
    # Pointers to other pages (docs/backfills.md) as links, relative to docs/reference/.
    text = re.sub(r"\bdocs/([\w-]+)\.md(#[\w-]+)?", r"[\1](../\1.md\2)", text)
    # Angle brackets outside code spans would read as HTML.
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return " ".join("`".join(parts).split()).replace("|", "\\|")


def _sentence(text: str) -> str:
    text = _md(text)
    return text if text.endswith(".") else text + "."


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- configuration ------------------------------------------------------------------------------


def _type(annotation: Any) -> str:
    args = get_args(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return "list of tables"
        return f"list of {_type(inner)}s"
    if origin is dict:
        return f"table: {_type(args[0])} → {_type(args[1])}"
    names: dict[Any, str] = {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        SecretStr: "string (secret)",
        datetime: "ISO-8601 time",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    marks = []
    for m in info.metadata:
        if isinstance(m, Ge):
            marks.append(f"≥ {m.ge:_}".replace("_", ","))
        elif isinstance(m, Gt):
            marks.append(f"> {m.gt}")
        elif isinstance(m, Le):
            marks.append(f"≤ {m.le:_}".replace("_", ","))
        elif isinstance(m, Lt):
            marks.append(f"< {m.lt}")
        elif isinstance(m, MinLen):
            marks.append("not empty")
    return f" ({', '.join(marks)})" if marks else ""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    return f"`{_toml(value)}`"


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Dotted setting -> its flag and the commands that take it."""
    commands = {n: p for n, p in _subcommands(parser).items() if n in SETTINGS_COMMANDS}
    dests = {**cli.FLAG_SETTINGS, **cli.PAIR_FLAG_SETTINGS}
    out: dict[str, str] = {}
    for dest, dotted in dests.items():
        option, where = "", []
        for name, sub in commands.items():
            for action in sub._actions:
                if action.dest == dest and action.option_strings:
                    option = action.option_strings[0]
                    where.append(name)
        if option:
            out[dotted] = f"`{option}` ({', '.join(where)})"
    return out


def _fields_table(
    model: type[BaseModel], prefix: str, env: dict[str, str] | None, flags: dict[str, str]
) -> str:
    """One row per field; without ``env`` (a table inside a list) no environment or flag."""
    rows = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        row = [f"`{dotted}`", _md(_type(info.annotation) + _bounds(info)), _default(info)]
        if env is not None:
            row += [env.get(dotted, ""), flags.get(dotted, "")]
        rows.append([*row, _md(info.description or "")])
    head = ["setting", "type", "default"]
    if env is not None:
        head += ["environment", "flag"]
    return _table([*head, "description"], rows)


def configuration() -> str:
    env = {".".join(path): f"`{name}`" for name, path in config.ENVIRONMENT.items()}
    env["kafka.topics"] += " (comma-separated)"
    flags = _flags(cli.build_parser())
    out = [
        _banner("the settings model, `consumer/config.py`"),
        "# Settings reference\n\n",
        "Every setting, by TOML section. Settings come from a TOML file (`--config FILE`), then "
        "the environment, then flags; later ones win. A bad setting stops the sink before it "
        "starts with one line naming it, and exit code 2. How to choose them: "
        "[configuration](../configuration.md).\n\n",
    ]
    for section, info in config.Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        out.append(f"## `[{section}]`\n\n")
        out.append(_md(model.__doc__ or "") + "\n\n")
        out.append(_fields_table(model, f"{section}.", env, flags))
        if model is config.MappingSettings:
            out.append("\nThe reserved fields and the trait keys each reads by default:\n\n")
            rows = [
                [f"`{field}`", ", ".join(f"`{k}`" for k in keys)]
                for field, keys in config.DEFAULT_FIELDS.items()
            ]
            out.append(_table(["Knock field", "trait keys, first present wins"], rows))
        if model is config.WorkflowSettings:
            rule = config.WorkflowRule
            out.append(f"\n### `[[{section}.rules]]`\n\n{_md(rule.__doc__ or '')}\n\n")
            out.append(_fields_table(rule, "", None, {}))
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


# -- metrics ------------------------------------------------------------------------------------


def metrics() -> str:
    m = Metrics()
    rows = []
    declared = set()
    for d in Metrics.declared():
        declared.add(d.name)
        labels = ", ".join(f"`{label}`" for label in d.labels)
        text = _sentence(d.help) + (" " + _md(d.doc) if d.doc else "")
        rows.append([f"`{d.exposed}`", d.kind, labels, text])
    # Metrics registered by the sink's parts into the same registry (the freshness
    # histograms), read back from the registry itself.
    for family in m.registry.collect():
        if family.name in declared:
            continue
        found = sorted({k for s in family.samples for k in s.labels if k != "le"})
        name = f"{family.name}_total" if family.type == "counter" else family.name
        rows.append(
            [
                f"`{name}`",
                family.type,
                ", ".join(f"`{x}`" for x in found),
                _sentence(family.documentation),
            ]
        )
    return (
        _banner("the metric declarations, `consumer/metrics.py`")
        + "# Metrics reference\n\n"
        + "Served at `/metrics` on `sink.metrics_port` (`--metrics-port`), beside the probes. "
        + "Labels never carry user ids or settings. What to watch: "
        + "[operations](../operations.md#metrics).\n\n"
        + _table(["metric", "kind", "labels", "what"], rows)
    )


# -- command line -------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = _subparsers(parser)
    return dict(sub.choices) if sub is not None else {}


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and not isinstance(action.choices, dict):
        return " \\| ".join(f"`{c}`" for c in action.choices)
    metavar = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    return f"`{metavar}`"


def _options(parser: argparse.ArgumentParser) -> str:
    excludes: dict[argparse.Action, list[argparse.Action]] = {}
    for group in parser._mutually_exclusive_groups:
        for a in group._group_actions:
            excludes[a] = [b for b in group._group_actions if b is not a]
    settings = {**cli.FLAG_SETTINGS, **cli.PAIR_FLAG_SETTINGS}
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(f"`{o}`" for o in action.option_strings) or _value(action)
        text = _sentence(action.help) if action.help else ""
        if (
            action.option_strings
            and action.default not in (None, False, [], True)
            and "default" not in text
        ):
            text += f" Default `{action.default}`."
        if action.nargs == argparse.OPTIONAL or isinstance(action, argparse._AppendAction):
            text += " Repeatable." if "repeatable" not in text else ""
        if action.dest in settings and parser.prog.split()[-1] in SETTINGS_COMMANDS:
            text += f" Sets `{settings[action.dest]}`."
        if action.required and action.option_strings:
            text += " Required."
        if action in excludes:
            text += " Not with " + ", ".join(f"`{b.option_strings[0]}`" for b in excludes[action])
            text += "."
        rows.append([name, _value(action) if action.option_strings else "", text.strip()])
    return _table(["option", "value", "what"], rows)


def command_line() -> str:
    parser = cli.build_parser()
    doc = (cli.__doc__ or "").split("\n\n", 1)[1]
    out = [
        _banner("the argparse parsers, `consumer/cli.py`"),
        "# Command-line reference\n\n",
        _md(parser.description or "") + "\n\n",
        _md(doc) + "\n\n",
        "Flags override the environment and the settings file; the settings they fill are in "
        "the [settings reference](configuration.md).\n\n",
    ]
    helps = {a.dest: a.help or "" for a in getattr(_subparsers(parser), "_choices_actions", [])}
    for name, sub in _subcommands(parser).items():
        positionals = " ".join(
            str(a.metavar or a.dest)
            for a in sub._actions
            if not a.option_strings and a.dest != "help"
        )
        out.append(f"## `knock-sink {name}`\n\n")
        out.append(
            f"```text\nknock-sink {name} [options]{' ' + positionals if positionals else ''}"
            "\n```\n\n"
        )
        out.append(_md(sub.description or _capital(_sentence(helps.get(name, "")))) + "\n\n")
        if sub.epilog:
            out.append(_md(sub.epilog) + "\n\n")
        out.append(_options(sub) + "\n")
    return "".join(out).rstrip("\n") + "\n"


PAGES: dict[str, Callable[[], str]] = {
    "docs/reference/configuration.md": configuration,
    "docs/reference/metrics.md": metrics,
    "docs/reference/cli.md": command_line,
}


def render() -> dict[str, str]:
    """Each generated page's path (relative to the repository) -> its text."""
    return {path: page() for path, page in PAGES.items()}


def stale(root: Path = ROOT) -> list[str]:
    """The pages whose committed text differs from what the code generates."""
    return [
        path
        for path, text in render().items()
        if not (root / path).exists() or (root / path).read_text() != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"{path} is out of date: run `{COMMAND}` (make docs)", file=sys.stderr)
        return 1 if bad else 0
    for path, text in render().items():
        target = ROOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
