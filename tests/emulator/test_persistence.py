"""State survives a restart when the emulator has a database file."""

from __future__ import annotations

from pathlib import Path

from consumer.emulator import EmulatorServer

from .helpers import make_knock, wait_bulk


def test_users_survive_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "emulator.db")
    with EmulatorServer(rate_limits="off", db=db) as server, make_knock(server) as knock:
        knock.users.update(
            "u1", email="a@x.io", preferences={"default": {"channel_types": {"email": True}}}
        )
        wait_bulk(
            knock, knock.users.bulk.identify(users=[{"id": f"b{n}", "n": n} for n in range(50)]).id
        )
        before = server.users()
        # Accepted but maybe not yet applied: shutdown applies it first.
        knock.users.bulk.identify(users=[{"id": "late"}])
    with EmulatorServer(rate_limits="off", db=db) as server, make_knock(server) as knock:
        after = server.users()
        assert after[:-1] == before
        assert after[-1]["id"] == "late"
        assert knock.users.get("b7").n == 7  # type: ignore[attr-defined]
        assert [u.id for u in knock.users.list()][:2] == ["u1", "b0"]
