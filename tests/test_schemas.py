"""``schemas/`` documents what the sink reads: the events the sink is tested with must fit it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from consumer.config import MappingSettings
from consumer.demo import SAMPLE_EVENTS
from consumer.errors import InvalidEvent
from consumer.events import parse_event
from consumer.mapping import Mapper

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "schemas" / "segment-event.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_the_schema_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=lambda e: e["type"])
def test_sample_events_fit_the_schema_and_parse(event):
    VALIDATOR.validate(event)
    parse_event(event)


@pytest.mark.parametrize(
    "event",
    [
        {"userId": "u1"},
        {"type": "dance", "userId": "u1"},
        {"type": "identify", "userId": "u1", "traits": ["a"]},
        {"type": "alias", "userId": "u1"},
    ],
)
def test_what_the_schema_refuses_the_parser_refuses(event):
    assert not VALIDATOR.is_valid(event)
    with pytest.raises(InvalidEvent):
        Mapper(MappingSettings()).map(parse_event(event))
