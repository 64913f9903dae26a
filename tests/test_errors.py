"""The error tree drawn in :mod:`consumer.errors` is the tree of its classes (as httpx holds
its exported members against a list), so the drawing cannot drift again."""

from __future__ import annotations

import inspect
import re

import consumer.errors as errors


def drawn_tree() -> dict[str, str | None]:
    """Each class named in the module docstring's drawing -> its drawn parent."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^(\s*(?:[│ ]\s*)*(?:[├└]── )?)([A-Z]\w+)(\s|$)", line)
        if not m or not m.group(2).endswith(("Error", "Event")):
            continue
        depth = len(m.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[m.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, m.group(2)))
    return parents


def test_the_drawn_tree_is_the_class_tree():
    classes = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.SinkError)}  # fmt: skip
    actual = {name: (None if cls is errors.SinkError else cls.__bases__[0].__name__)
              for name, cls in classes.items()}  # fmt: skip
    assert drawn_tree() == actual


def test_every_error_class_has_one_parent_in_the_tree():
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.SinkError) and cls is not errors.SinkError:
            assert len(cls.__bases__) == 1, name
