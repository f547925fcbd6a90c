"""container.parse: the one strict parser of booleans and numbers (torch-free)."""

import pytest

from container.parse import ConfigError, env_bool, env_float, env_int, parse_bool, parse_float, parse_int


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("TRUE", True),
        (" 1 ", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_parse_bool_words(text, value):
    assert parse_bool(text, "X") is value


@pytest.mark.parametrize("text", ["flase", "ture", "2", "", "enabled"])
def test_parse_bool_rejects_typos_naming_the_field(text):
    with pytest.raises(ConfigError, match="SM_VISION_URL_FETCH"):
        parse_bool(text, "SM_VISION_URL_FETCH")


def test_parse_numbers_strict_and_ranged():
    assert parse_int(" 12 ", "N") == 12
    assert parse_float("2.5", "F") == 2.5
    for bad in ("1O", "1.5", "", "twelve"):
        with pytest.raises(ConfigError, match="N="):
            parse_int(bad, "N")
    for bad in ("nan", "inf", "x"):
        with pytest.raises(ConfigError, match="F="):
            parse_float(bad, "F")
    with pytest.raises(ConfigError, match=">= 1"):
        parse_int("0", "N", minimum=1)
    with pytest.raises(ConfigError, match="<= 10"):
        parse_float("11", "F", maximum=10)


def test_env_readers_default_when_unset_or_blank():
    assert env_bool({}, "B", True) is True
    assert env_bool({"B": " "}, "B", False) is False
    assert env_int({"N": "3"}, "N", None) == 3
    assert env_int({}, "N", None) is None
    assert env_float({"F": "0.5"}, "F", 1.0) == 0.5
    with pytest.raises(ConfigError, match="B='flase'"):
        env_bool({"B": "flase"}, "B")
