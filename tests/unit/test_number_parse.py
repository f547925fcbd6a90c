"""container.parse reads every client-supplied number strictly (issue 22): ASCII digits
only, bounded length, so `?top_k=²` or a 5,000-digit value is a clear ConfigError (a
400 where serve/ maps it), never a ValueError from int() (a 500)."""

from __future__ import annotations

import pytest

from container.parse import MAX_NUMBER_CHARS, ConfigError, parse_float, parse_int


@pytest.mark.parametrize(
    "text",
    [
        "²",  # str.isdigit() says yes, int() says no
        "٣",  # Arabic-Indic three: int() says 3
        "１２",  # full-width digits
        "1_000",  # int() allows underscores
        "9" * 5_000,  # int() refuses past 4,300 digits with a ValueError
        "0x10",
        "1e3",
        "\u00a012",  # a no-break space is not ASCII whitespace
        "",
    ],
)
def test_client_numbers_are_ascii_digits_of_bounded_length(text):
    with pytest.raises(ConfigError, match="top_k=") as err:
        parse_int(text, "top_k", minimum=1)
    assert len(str(err.value)) < 200  # a 5,000-digit value is not echoed back whole


@pytest.mark.parametrize("text, value", [("5", 5), (" 7\n", 7), ("+3", 3), ("-4", -4), ("0" * 39 + "1", 1)])
def test_plain_integers_parse(text, value):
    assert parse_int(text, "N") == value


def test_the_length_bound_is_checked_before_conversion():
    with pytest.raises(ConfigError, match=f"at most {MAX_NUMBER_CHARS} characters"):
        parse_int("1" * (MAX_NUMBER_CHARS + 1), "N")


@pytest.mark.parametrize("text, value", [("2.5", 2.5), ("3e-4", 3e-4), (".5", 0.5), ("5.", 5.0), ("-1E2", -100.0)])
def test_plain_floats_parse(text, value):
    assert parse_float(text, "F") == value


@pytest.mark.parametrize("text", ["nan", "inf", "1e999", "1_0.5", "²", "٣.5", "0x1p3", "1.2.3"])
def test_other_floats_are_refused(text):
    with pytest.raises(ConfigError, match="F="):
        parse_float(text, "F")
