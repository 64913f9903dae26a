"""Ops as the calls that carry them (:mod:`consumer.calls`): the same routes the client
sends (the wire shapes themselves: ``tests/test_validate.py``)."""

from __future__ import annotations

import pytest

from consumer.calls import BULK_IDENTIFY, call_for, user_path
from consumer.knock.transport import path_id
from consumer.ops import Delete, Identify, Merge


@pytest.mark.parametrize("user_id", ["u1", "u/1", "a b", "é#?", "%2F"])
def test_a_users_route_is_quoted_as_the_client_quotes_it(user_id):
    assert user_path(user_id) == f"/v1/users/{path_id(user_id)}"


def test_each_op_takes_the_route_of_its_kind_and_an_action_none():
    assert call_for(Identify("u", {})).route == BULK_IDENTIFY
    assert call_for(Merge("u", "v")).route == "/v1/users/u/merge"
    with pytest.raises(TypeError, match="Delete"):
        call_for(Delete("u"))
