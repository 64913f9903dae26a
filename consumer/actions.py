"""Segment calls -> Knock actions besides user properties: workflow triggers, tenants, objects
and subscriptions, audience memberships, deletes.

:class:`Actions` wraps the trait :class:`~consumer.mapping.Mapper` (whose rules it leaves as
they are) and appends, after its ops, what the ``[workflows]``, ``[groups]``, ``[audiences]``
and ``[deletes]`` sections ask for:

* ``track`` (by ``event``), ``page`` / ``screen`` (by ``name``) -> one
  :class:`~consumer.ops.Trigger` per matching workflow rule, the recipient identified inline
  with the event's traits (``context.traits``), only inside the trigger window (see
  :meth:`Actions.window`); outside it the note ``trigger_too_old``, ``trigger_backfill`` (a
  backfill without ``--trigger-workflows``) or ``trigger_no_time``.
* ``group`` -> :class:`~consumer.ops.SetTenant` or :class:`~consumer.ops.SetObject` from its own
  traits, and with ``subscribe`` a :class:`~consumer.ops.Subscribe` of its user to the object.
* ``identify`` traits named as audiences (``true`` / ``false``), and ``Audience Entered`` /
  ``Audience Exited`` tracks -> :class:`~consumer.ops.Audience`.
* a tombstone (null value) keyed by a user id -> :class:`~consumer.ops.Delete`.

The idempotency key of a trigger: ``ks1-`` and the SHA-256 of the message's ``messageId`` and
the workflow key. Segment's libraries give every message a ``messageId`` and keep it through
their retries, so a resent event is the same trigger. Without one, the Kafka position
(topic, partition, offset) stands in: it is stable across every replay of the record (restart,
rebalance, backfill), which is what Knock must deduplicate; a producer that writes one event
twice without an id cannot be told apart from two events anyway.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Settings, WorkflowRule
from .errors import ConfigError, InvalidEvent
from .events import Event
from .mapping import Mapped, Mapper, check_user_id
from .ops import Audience, Delete, Identify, SetObject, SetTenant, Subscribe, Trigger
from .records import Record

#: Knock's idempotency window (seconds): a backfill never triggers events older than this.
IDEMPOTENCY_WINDOW = 86_400.0
_MISSING = object()


def get_path(message: dict[str, Any], path: str) -> Any:
    """The value at dot path ``path`` of ``message`` (``properties.order_id``), or a sentinel
    :data:`_MISSING` when a step is absent or not an object."""
    value: Any = message
    for step in path.split("."):
        if type(value) is not dict or step not in value:
            return _MISSING
        value = value[step]
    return value


def idempotency_key(workflow: str, message_id: str | None, rec: Record | None) -> str:
    """Stable per (message, workflow); see the module docstring for the choice."""
    if message_id is not None:
        seed = f"m\x1f{message_id}\x1f{workflow}"
    elif rec is not None:
        seed = f"p\x1f{rec.topic}\x1f{rec.partition}\x1f{rec.offset}\x1f{workflow}"
    else:
        raise InvalidEvent(
            "invalid_event", "workflow trigger: no messageId to derive its idempotency key"
        )
    return "ks1-" + hashlib.sha256(seed.encode()).hexdigest()


def _matcher(rule: WorkflowRule) -> Callable[[str], bool]:
    if rule.event is not None:
        return rule.event.__eq__
    assert rule.pattern is not None
    if rule.pattern.startswith("re:"):
        rx = re.compile(rule.pattern[3:])
        return lambda name: rx.fullmatch(name) is not None
    glob = rule.pattern
    return lambda name: fnmatch.fnmatchcase(name, glob)


class Actions:
    """Maps events to trait ops plus action ops, with one :class:`~consumer.config.Settings`.

    :param clock: wall-clock seconds, for the trigger window.
    """

    def __init__(
        self,
        settings: Settings,
        mapper: Mapper | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mapper = mapper or Mapper(settings.mapping)
        self._wf = settings.workflows
        self._groups = settings.groups
        self._aud = settings.audiences
        self._anonymous = settings.mapping.anonymous == "anonymous_id"
        self._prefix = settings.mapping.anonymous_prefix
        self.tombstones = settings.deletes.tombstones
        self._clock = clock
        self._rules = [(r, _matcher(r)) for r in self._wf.rules]
        self._aud_traits = frozenset(self._aud.traits)
        self._backfill = False
        self._since: float | None = None

    def window(self, *, backfill: bool) -> None:
        """Set the trigger window: ``run`` triggers events at most ``workflows.max_age`` old;
        a backfill none, or with ``workflows.backfill`` those after ``workflows.since``.

        :raises ConfigError: ``workflows.since`` is earlier than Knock's 24 h idempotency
            window allows (a replay of such a trigger would run again).
        """
        self._backfill = backfill
        if not backfill:
            self._since = None
            return
        now = self._clock()
        floor = now - IDEMPOTENCY_WINDOW
        since = self._wf.since
        if since is None:
            self._since = floor
        elif since.timestamp() < floor - 1.0:
            earliest = datetime.fromtimestamp(floor, UTC) + timedelta(seconds=1)
            raise ConfigError(
                "workflows.since",
                f"{since.isoformat()} is older than Knock's 24 h idempotency window "
                f"(earliest {earliest.isoformat(timespec='seconds')})",
            )
        else:
            self._since = since.timestamp()

    # -- mapping -----------------------------------------------------------------------------

    def tombstone(self, key: bytes | None) -> Mapped:
        """A null value keyed by a user id: delete that user.

        :raises InvalidEvent: ``undecodable`` when the key is no usable user id.
        """
        try:
            user_id = key.decode() if key is not None else ""
        except UnicodeDecodeError:
            user_id = ""
        if not user_id:
            raise InvalidEvent("undecodable", "empty value (tombstone) without a user id key")
        check_user_id(user_id)
        return Mapped([Delete(user_id)], [])

    def map(self, event: Event, message: dict[str, Any], rec: Record | None = None) -> Mapped:
        """The trait ops of :class:`~consumer.mapping.Mapper`, then the actions.

        :param message: the decoded message, where the rules' dot paths are read.
        :param rec: where it came from (idempotency keys of messages without ``messageId``,
            and the broker timestamp of messages without one of their own).
        """
        out = self._mapper.map(event)
        kind = event.type
        if kind == "group":
            if self._groups.mode != "off":
                self._group(event, out)
        elif kind == "identify":
            if self._aud_traits or self._aud.trait_prefix:
                self._audience_traits(event, out)
        elif kind == "track" or kind == "page" or kind == "screen":
            if self._rules:
                self._triggers(event, message, rec, out)
            if (
                kind == "track"
                and self._aud.track
                and event.event in (self._aud.entered, self._aud.exited)
            ):
                self._audience_track(event, message, out)
        return out

    def _user_id(self, event: Event) -> str | None:
        user_id = event.user_id
        if user_id is None and self._anonymous and event.anonymous_id is not None:
            user_id = self._prefix + event.anonymous_id
        if user_id is not None:
            check_user_id(user_id)
        return user_id

    def _user_props(self, out: Mapped, user_id: str) -> dict[str, Any]:
        for op in out.ops:
            if isinstance(op, Identify) and op.user_id == user_id:
                return dict(op.props)
        return {}

    def _group(self, event: Event, out: Mapped) -> None:
        if "ignored_type" in out.notes:
            out.notes.remove("ignored_type")
        group_id = event.group_id
        if group_id is None:
            out.notes.append("no_group_id")
            return
        s = self._groups
        drop, rename = frozenset(s.drop), s.rename
        props = {
            rename.get(k, k): v
            for k, v in event.group_traits.items()
            if k not in drop and k != "id"
        }
        if s.mode == "tenant":
            out.ops.append(SetTenant(group_id, props))
            return
        out.ops.append(SetObject(s.collection, group_id, props))
        if s.subscribe:
            user_id = self._user_id(event)
            if user_id is None:
                out.notes.append("no_user_id")
            else:
                out.ops.append(Subscribe(s.collection, group_id, user_id, {}))

    def _audience_traits(self, event: Event, out: Mapped) -> None:
        prefix = self._aud.trait_prefix
        user_id: str | None = None
        for key, value in event.traits.items():
            if key not in self._aud_traits and not (prefix and key.startswith(prefix)):
                continue
            if type(value) is not bool:
                out.notes.append("audience_not_bool")
                continue
            user_id = user_id or self._user_id(event)
            if user_id is None:
                return  # the mapper noted no_user_id
            out.ops.append(Audience(key, user_id, value, {}))

    def _audience_track(self, event: Event, message: dict[str, Any], out: Mapped) -> None:
        key = get_path(message, self._aud.key_path)
        if type(key) is not str or not key:
            out.notes.append("no_audience_key")
            return
        user_id = self._user_id(event)
        if user_id is None:
            out.notes.append("no_user_id")
            return
        out.ops.append(Audience(key, user_id, event.event == self._aud.entered, {}))

    def _event_time(self, event: Event, rec: Record | None) -> float | None:
        stamp: datetime | None = event.timestamp or event.original_timestamp
        if stamp is not None:
            return stamp.timestamp()
        if rec is not None and rec.timestamp is not None:
            return float(rec.timestamp) / 1000
        return None

    def _in_window(self, when: float | None, out: Mapped) -> bool:
        if self._backfill and not self._wf.backfill:
            out.notes.append("trigger_backfill")
            return False
        if when is None:
            out.notes.append("trigger_no_time")
            return False
        floor = self._since if self._backfill else self._clock() - self._wf.max_age
        if floor is not None and when < floor:
            out.notes.append("trigger_too_old")
            return False
        return True

    def _triggers(
        self, event: Event, message: dict[str, Any], rec: Record | None, out: Mapped
    ) -> None:
        if event.type == "track":
            name = event.event
        else:
            name = message.get("name")
            if not isinstance(name, str):
                name = get_path(message, "properties.name")
        if not isinstance(name, str):
            return
        matched = [r for r, match in self._rules if r.type == event.type and match(name)]
        if not matched:
            return
        user_id = self._user_id(event)
        if user_id is None:
            out.notes.append("no_user_id")
            return
        when = self._event_time(event, rec)
        if not self._in_window(when, out):
            return
        recipient = self._user_props(out, user_id)
        properties = message.get("properties")
        properties = properties if type(properties) is dict else {}
        for rule in matched:
            if rule.data is None:
                data = dict(properties)
            else:
                data = {}
                for name_, path in rule.data.items():
                    value = get_path(message, path)
                    if value is not _MISSING:
                        data[name_] = value
            actor = self._id_at(message, rule.actor)
            if actor is not None:
                check_user_id(actor)
            tenant = self._id_at(message, rule.tenant)
            out.ops.append(
                Trigger(
                    rule.key,
                    user_id,
                    recipient,
                    data,
                    actor,
                    tenant,
                    idempotency_key(rule.key, event.message_id, rec),
                    when,
                )
            )

    @staticmethod
    def _id_at(message: dict[str, Any], path: str | None) -> str | None:
        if path is None:
            return None
        value = get_path(message, path)
        if type(value) is str and value:
            return value
        if type(value) is int:
            return str(value)
        return None
