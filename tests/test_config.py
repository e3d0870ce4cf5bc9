"""StorageConfig: defaults, ATLAS_* overrides, validation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors import StorageConfig
from atlas_actors import config as config_module
from atlas_actors.errors import ConfigError


def test_defaults_are_durable_and_have_at_least_two_readers() -> None:
    config = StorageConfig()
    assert config.synchronous == "FULL"
    assert config.readers >= 2
    assert config.readers == max(2, os.cpu_count() or 2)
    assert config.max_readers >= config.readers


def test_environment_variables_override_defaults_and_arguments_override_both() -> None:
    env = {"ATLAS_READERS": "3", "ATLAS_SYNCHRONOUS": "normal", "ATLAS_VERIFY_ON_RESTART": "no"}
    config = StorageConfig.from_env(env)
    assert (config.readers, config.synchronous, config.verify_on_restart) == (3, "NORMAL", False)
    assert StorageConfig.from_env(env, readers=5).readers == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ATLAS_READERS": "many"}, "ATLAS_READERS='many' is not a valid int"),
        ({"ATLAS_MAX_BATCH_DELAY": "soon"}, "ATLAS_MAX_BATCH_DELAY='soon' is not a valid float"),
        ({"ATLAS_VERIFY_ON_RESTART": "perhaps"}, "is not a valid bool"),
    ],
)
def test_unparsable_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StorageConfig.from_env(env)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"readers": 0}, "readers=0"),
        ({"readers": True}, "readers=True"),
        ({"synchronous": "SOMETIMES"}, "synchronous='SOMETIMES'"),
        ({"default_timeout": 0}, "default_timeout=0"),
        ({"max_batch_delay": -1}, "max_batch_delay=-1"),
        ({"reader_mmap_bytes": -1}, "reader_mmap_bytes=-1"),
        ({"readers": 8, "max_readers": 4}, "max_readers=4 < readers=8"),
        ({"transaction_timeout": float("nan")}, "transaction_timeout=nan"),
        ({"default_timeout": float("inf")}, "default_timeout=inf"),
        ({"busy_timeout": float("nan")}, "busy_timeout=nan"),
        ({"busy_timeout": 0}, "busy_timeout=0; it must be a finite number > 0"),  # (a spin)
        ({"restart_backoff_jitter": 1e308}, "restart_backoff_jitter=1e.308; it is a fraction"),
        ({"restart_backoff_jitter": 1.5}, "restart_backoff_jitter=1.5; it is a fraction"),
        ({"busy_backoff_base": 0}, "busy_backoff_base=0; it must be a finite number > 0"),
        ({"busy_backoff_cap": 0.0}, "busy_backoff_cap=0.0; it must be a finite number > 0"),
        # A string such as 'off' is truthy: accepted, it meant the opposite.
        ({"cache": "off"}, r"cache='off'; it must be a bool: pass cache=True or cache=False"),
        ({"cache": 0}, r"cache=0; it must be a bool"),
        ({"cache_disk": "false"}, r"cache_disk='false'; it must be a bool"),
        ({"verify_on_restart": "no"}, r"verify_on_restart='no'; it must be a bool"),
        ({"cache_dir": 123}, r"cache_dir=123; it must be a directory path"),
        ({"cache_dir": None}, r"cache_dir=None; it must be a directory path"),
        # Past SQLite's SQLITE_MAX_LENGTH (a C int at most): a raw OverflowError before.
        ({"max_value_bytes": 2**31}, r"max_value_bytes=2147483648 is above .*pass at most \d+"),
        ({"max_value_bytes": 1.5e6}, r"max_value_bytes=1500000.0; it must be an integer"),
        ({"max_value_bytes": 0}, r"max_value_bytes=0"),
        # Past what a lock's timeout takes (a raw OverflowError at the first wait before).
        ({"default_timeout": 1e12}, r"default_timeout=1000000000000.0 seconds is too long"),
        ({"busy_timeout": 2e9}, r"busy_timeout=2000000000.0 seconds is too long"),
        # A float for an integer: max_page_count=8.0 was taken by no PRAGMA (no bound at
        # all), 1.5 would be cut; past SQLite's range it wrapped (a cache of 0 pages).
        ({"max_page_count": 8.0}, r"max_page_count=8.0; it must be an integer \(int\)"),
        ({"checkpoint_frames": 1.5}, r"checkpoint_frames=1.5; it must be an integer"),
        ({"cache_size_kib": 2**62}, r"cache_size_kib=\d+ is too large; pass at most 2147483647"),
        ({"max_page_count": 2**32 - 1}, r"max_page_count=4294967295 is too large"),
        ({"mailbox_size": 10**30}, r"mailbox_size=1000+ is too large"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_and_value(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        StorageConfig(**options)  # type: ignore[arg-type]


def test_unknown_options_are_rejected_with_the_known_ones_listed() -> None:
    with pytest.raises(ConfigError, match=r"unknown configuration option.*readerz"):
        StorageConfig.from_env({}, readerz=3)


def test_replace_validates_the_copy() -> None:
    config = StorageConfig()
    assert config.replace(readers=4).readers == 4
    with pytest.raises(ConfigError):
        config.replace(mailbox_size=0)


@pytest.mark.parametrize(
    ("variable", "options", "expected"),
    [
        # Each variable alone is invalid (or clashes with a default); the option fixes it.
        (("ATLAS_MAX_READERS", "1"), {"readers": 1}, {"readers": 1, "max_readers": 1}),
        (("ATLAS_READERS", "40"), {"max_readers": 40}, {"readers": 40, "max_readers": 40}),
        (("ATLAS_SYNCHRONOUS", "fast"), {"synchronous": "NORMAL"}, {"synchronous": "NORMAL"}),
    ],
)
def test_open_applies_its_options_over_the_environment_before_validating(
    monkeypatch: pytest.MonkeyPatch,
    db_path: Path,
    variable: tuple[str, str],
    options: dict[str, object],
    expected: dict[str, object],
) -> None:
    monkeypatch.setenv(*variable)
    with atlas.open(db_path, **options) as db:
        assert {name: getattr(db.config, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ATLAS_READERS": "0"}, r"^ATLAS_READERS=0: readers=0; it must be an integer >= 1"),
        (
            {"ATLAS_MAX_READERS": "1", "ATLAS_READERS": "3"},
            r"^ATLAS_MAX_READERS=1, ATLAS_READERS=3: max_readers=1 < readers=3",
        ),
        ({"ATLAS_SYNCHRONOUS": "fast"}, r"^ATLAS_SYNCHRONOUS=fast: synchronous='FAST'"),
        ({"ATLAS_CACHE_TTL": "-1"}, r"^ATLAS_CACHE_TTL=-1: cache_ttl=-1"),
    ],
)
def test_a_refused_value_from_the_environment_names_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        StorageConfig.from_env(env)
    assert "unset the environment variable" in str(caught.value)


def test_open_names_the_variable_that_made_the_configuration_invalid(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    monkeypatch.setenv("ATLAS_MAX_READERS", "1")
    with pytest.raises(ConfigError, match=r"^ATLAS_MAX_READERS=1: max_readers=1 < readers=2"):
        atlas.open(db_path, readers=2)
    # An invalid option passed to open is named as the option, not as a variable.
    with pytest.raises(ConfigError, match=r"^readers=0; it must be"):
        atlas.open(db_path, readers=0)
    assert not db_path.exists()


def test_an_option_replaces_a_variable_without_reading_it() -> None:
    config = StorageConfig.from_env({"ATLAS_READERS": "many"}, readers=3)
    assert config.readers == 3


def test_max_value_bytes_may_be_sqlites_own_limit_and_cache_dir_a_path(tmp_path: Path) -> None:
    limit = config_module._sqlite_max_length()
    assert StorageConfig(max_value_bytes=limit).max_value_bytes == limit
    config = StorageConfig(cache_dir=tmp_path / "l2")  # type: ignore[arg-type]
    assert config.cache_dir == str(tmp_path / "l2")


def test_open_refuses_an_oversize_value_limit_with_a_config_error(db_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_value_bytes=2147483648"):
        atlas.open(db_path, max_value_bytes=2**31)


@pytest.mark.parametrize("name", config_module._SECONDS_FIELDS)
@pytest.mark.parametrize("value", ["off", b"1", [1]])
def test_a_duration_of_the_wrong_type_is_a_config_error_naming_it(name: str, value: object) -> None:
    """Every duration is type-checked before it is compared with the longest wait."""
    with pytest.raises(ConfigError, match=name):
        StorageConfig(**{name: value})


def test_synchronous_is_taken_in_any_case_as_the_variable_is() -> None:
    assert StorageConfig(synchronous="full").synchronous == "FULL"  # type: ignore[arg-type]
    assert StorageConfig(synchronous=" Normal ").synchronous == "NORMAL"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="synchronous='SOMETIMES'"):
        StorageConfig(synchronous="sometimes")  # type: ignore[arg-type]


def test_a_misspelled_variable_is_warned_of_and_others_are_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"ATLAS_READRES": "8", "ATLAS_APP_THEME": "dark", "ATLAS_READERS_X": "1"}
    with caplog.at_level("WARNING", logger="atlas_actors.config"):
        config = StorageConfig.from_env(env)
    assert config.readers == StorageConfig().readers  # (ignored, as before)
    warned = [record.getMessage() for record in caplog.records]
    assert warned == [
        "ATLAS_READRES is not an atlas-actors setting and is ignored; did you mean ATLAS_READERS?",
        "ATLAS_READERS_X is not an atlas-actors setting and is ignored; did you mean "
        "ATLAS_READERS?",
    ]


def test_every_integer_field_is_checked_as_an_integer_within_a_bound() -> None:
    integers = {f.name for f in dataclasses.fields(StorageConfig) if f.type == "int"}
    own_bounds = {"readers", "max_readers", "max_value_bytes"}
    assert integers - own_bounds == set(config_module._INT_FIELDS)
