"""Settings: one typed model; file < environment < flags; every problem one line naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer.config import load_settings
from consumer.errors import ConfigError

CONFIGURATION = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_flags_win_over_environment_over_file(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        '[kafka]\ntopics = ["from-file"]\ngroup_id = "file-group"\n[knock]\nbulk_size = 10\n'
    )
    env = {"KNOCK_SINK_TOPICS": "a, b", "KNOCK_SINK_GROUP_ID": "env-group", "KNOCK_API_KEY": "sk_x"}
    s = load_settings(
        f, environ=env, overrides={"kafka.group_id": "flag-group", "knock.bulk_size": None}
    )
    assert s.kafka.topics == ["a", "b"]
    assert s.kafka.group_id == "flag-group"
    assert s.knock.bulk_size == 10  # an unset flag (None) does not hide the file
    assert s.knock.api_key is not None and s.knock.api_key.get_secret_value() == "sk_x"


def test_defaults():
    s = load_settings(environ={})
    assert (s.knock.base_url, s.knock.bulk_size, s.knock.rate_limits) == (
        "https://api.knock.app",
        1000,
        "knock",
    )
    assert (s.kafka.group_id, s.kafka.dlq_for("events"), s.mapping.default_region) == (
        "knock-sink",
        "events.dlq",
        "US",
    )


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"knock.bulk_size": 1001}, "knock.bulk_size"),
        ({"knock.rate_limits": "sometimes"}, "knock.rate_limits"),
        ({"knock.base_url": "ftp://x"}, "knock.base_url"),
        ({"mapping.default_region": "XX"}, "mapping.default_region"),
        ({"mapping.fields": {"nickname": ["nick"]}}, "mapping.fields"),
        ({"sink.no_such_thing": 1}, "sink.no_such_thing"),
    ],
)
def test_a_bad_setting_is_one_error_naming_it(overrides, setting):
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, overrides=overrides)
    assert err.value.setting == setting
    assert "\n" not in str(err.value)


def test_the_api_key_never_shows_in_a_settings_error():
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={"KNOCK_API_KEY": "sk_secret_value"}, overrides={"knock.bulk_size": 0}
        )
    assert "sk_secret_value" not in str(err.value)
    s = load_settings(environ={"KNOCK_API_KEY": "sk_secret_value"})
    assert "sk_secret_value" not in repr(s) and "sk_secret_value" not in str(s.model_dump())


def test_the_documented_example_loads(tmp_path):
    example = re.search(r"```toml\n(.*?)```", CONFIGURATION.read_text(), re.S)
    assert example is not None
    f = tmp_path / "knock-sink.toml"
    f.write_text(example.group(1))
    s = load_settings(f, environ={})
    assert s.kafka.client["security.protocol"] == "SASL_SSL"
    assert s.mapping.field_sources()["locale"] == [] and s.mapping.rename == {"plan": "plan_name"}


def test_every_setting_is_described():
    """The settings reference is generated from these descriptions (attribute docstrings)."""
    from pydantic import BaseModel

    from consumer.config import Settings, WorkflowRule

    sections = [info.annotation for info in Settings.model_fields.values()]
    for model in [*sections, WorkflowRule]:
        assert isinstance(model, type) and issubclass(model, BaseModel)
        assert model.__doc__, f"{model.__name__} has no docstring"
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no docstring"
