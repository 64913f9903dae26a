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
        # The class name is the first word after the tree's drawing characters.
        m = re.match(r"[ │├└─]*", line)
        depth = m.end() if m else 0
        name = line[depth:].split(" ", 1)[0]
        if depth < 4 or not re.fullmatch(r"[A-Z]\w+", name):
            continue  # prose, or the drawing's continuation lines
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_the_drawn_tree_is_the_class_tree():
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.SinkError)
    }
    actual = {
        name: (None if cls is errors.SinkError else cls.__bases__[0].__name__)
        for name, cls in classes.items()
    }
    assert drawn_tree() == actual


def test_every_error_class_has_one_parent_in_the_tree():
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.SinkError) and cls is not errors.SinkError:
            assert len(cls.__bases__) == 1, name
