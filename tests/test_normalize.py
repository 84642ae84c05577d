"""Id normalization: table-driven cases for every kind and every error."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vfm_flower.errors import ConfigurationError, DataError
from vfm_flower.normalize import IdSpec, check_unique, normalize_ids

EMAIL_CASES = [
    ("alice@example.com", "alice@example.com"),
    ("  Alice@Example.COM ", "alice@example.com"),
    ("\tBOB.Smith+tag@Mail.Example.org\n", "bob.smith+tag@mail.example.org"),
    ("Jose\u0301@Example.com", "jos\u00e9@example.com"),  # NFC: decomposed accent composed
    ("JOS\u00c9@example.com", "jos\u00e9@example.com"),
]

EMAIL_ERRORS = [
    ("no-at-sign.example.com", "malformed"),
    ("a@b@example.com", "malformed"),
    ("@example.com", "malformed"),
    ("alice@", "malformed"),
    ("ali ce@example.com", "malformed"),
    ("", "empty"),
    ("   ", "empty"),
    (None, "empty"),
    (float("nan"), "empty"),
    (np.nan, "empty"),
    (pd.NA, "empty"),
    (12345, "not text"),
    (True, "not text"),
]

PHONE_CASES = [
    # (value, default country code, expected)
    ("+1 (555) 123-4567", "1", "+15551234567"),
    ("001 555 123 4567", "1", "+15551234567"),
    ("(555) 123-4567", "1", "+15551234567"),
    ("555.123.4567", "1", "+15551234567"),
    ("1-555-123-4567", "1", "+15551234567"),  # NANP trunk prefix 1
    (5551234567, "1", "+15551234567"),
    (np.int64(5551234567), "1", "+15551234567"),
    (5551234567.0, "1", "+15551234567"),  # pandas int column with a missing value
    ("020 7946 0958", "44", "+442079460958"),  # trunk 0 dropped
    ("+44 20 7946 0958", "44", "+442079460958"),
    ("+44 (0)20 7946 0958", "44", "+442079460958"),  # bracketed trunk 0
    ("0044 20 7946 0958", "44", "+442079460958"),
    ("07911 123456", "44", "+447911123456"),
    ("+44 7911 123456", "1", "+447911123456"),  # own country code wins over the default
    ("06 12 34 56 78", "33", "+33612345678"),
    ("+33 6 12 34 56 78", "44", "+33612345678"),
    ("030/123456", "49", "+4930123456"),
    ("+49 30 123456", "49", "+4930123456"),
]

PHONE_ERRORS = [
    ("123", "malformed"),  # too few digits
    ("+1234567890123456", "malformed"),  # 16 digits: more than E.164 allows
    ("555-CALL-NOW", "malformed"),
    ("555 123 4567 ext 12", "malformed"),
    ("12+345678901", "malformed"),  # '+' only at the start
    ("++15551234567", "malformed"),
    ("+", "malformed"),
    ("", "empty"),
    (None, "empty"),
    (float("nan"), "empty"),
    (555.5, "malformed"),
    (b"5551234567", "not text"),
]

PLAIN_CASES = [
    # (value, case_sensitive, expected)
    (" AbC-123 ", None, "AbC-123"),  # default: case-sensitive
    (" AbC-123 ", True, "AbC-123"),
    (" AbC-123 ", False, "abc-123"),
    ("Stra\u00dfe", False, "strasse"),  # case folding, not just lower()
    (12345, None, "12345"),
    (12345.0, None, "12345"),
    (np.int32(7), None, "7"),
    ("e\u0301", None, "\u00e9"),
]

PLAIN_ERRORS = [
    (None, "empty"),
    ("", "empty"),
    (" \t", "empty"),
    (math.nan, "empty"),
    (pd.NaT, "empty"),
    (1.5, "malformed"),
    (True, "not text"),
    (b"bytes-id", "not text"),
]


@pytest.mark.parametrize(("value", "expected"), EMAIL_CASES)
def test_email(value: object, expected: str) -> None:
    assert normalize_ids([[value]], "email") == [expected]


@pytest.mark.parametrize(("value", "code", "expected"), PHONE_CASES)
def test_phone(value: object, code: str, expected: str) -> None:
    assert normalize_ids([[value]], "phone", default_country_code=code) == [expected]


@pytest.mark.parametrize(("value", "case_sensitive", "expected"), PLAIN_CASES)
def test_plain(value: object, case_sensitive: bool | None, expected: str) -> None:
    assert normalize_ids([[value]], "plain", case_sensitive=case_sensitive) == [expected]


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [("email", v, r) for v, r in EMAIL_ERRORS]
    + [("phone", v, r) for v, r in PHONE_ERRORS]
    + [("plain", v, r) for v, r in PLAIN_ERRORS],
)
def test_invalid_value_is_a_data_error(kind: str, value: object, reason: str) -> None:
    good = {"email": "ok@example.com", "phone": "+15551234567", "plain": "ok"}[kind]
    with pytest.raises(DataError) as err:
        normalize_ids([[good, value, good]], kind, party="bank")
    message = str(err.value)
    assert "party 'bank'" in message
    assert "1 of 3 rows" in message
    assert "first rows: 2 " in message
    assert reason in message
    if isinstance(value, str) and value.strip():
        assert value.strip() not in message


def test_error_never_shows_values_and_caps_row_list() -> None:
    values = ["ok@example.com"] + [f"secret-person-{i}" for i in range(8)] + ["x@y.z"]
    with pytest.raises(DataError) as err:
        normalize_ids([values], "email", party="insurer")
    message = str(err.value)
    assert "party 'insurer'" in message
    assert "8 of 10 rows" in message
    assert "first rows: 2, 3, 4, 5, 6, ..." in message
    assert "secret-person" not in message
    assert "ok@example.com" not in message


def test_case_insensitive_email_and_phone_refuse_case_sensitive() -> None:
    for kind in ("email", "phone"):
        with pytest.raises(ConfigurationError, match="case-insensitively"):
            normalize_ids([["a@b.c"]], kind, case_sensitive=True)
        normalize_ids([["+15551234567"]], "phone", case_sensitive=False)


def test_composite_keys_are_unambiguous() -> None:
    first = ["a", "ab", "Ab"]
    second = ["bc", "c", "c"]
    ids = normalize_ids([first, second], "plain")
    assert ids == ["1:a2:bc", "2:ab1:c", "2:Ab1:c"]
    assert len(set(ids)) == 3
    assert normalize_ids([first, second], "plain", case_sensitive=False)[2] == "2:ab1:c"


def test_composite_phone_and_email() -> None:
    ids = normalize_ids([["(555) 123-4567"], ["+44 20 7946 0958"]], "phone")
    assert ids == ["12:+1555123456713:+442079460958"]
    ids = normalize_ids([[" A@X.com", "b@x.com"], ["C@y.org", "d@Y.org "]], "email")
    assert ids == ["7:a@x.com7:c@y.org", "7:b@x.com7:d@y.org"]
    with pytest.raises(DataError, match="1 of 2 rows"):
        normalize_ids([["a@x.com", "b@x.com"], ["c@y.org", None]], "email")


def test_composite_counts_a_row_once() -> None:
    with pytest.raises(DataError, match="1 of 2 rows") as err:
        normalize_ids([["", "k"], [None, "v"]], "plain", party="broker")
    assert "2 empty or missing" in str(err.value)  # two bad values, one bad row


def test_table_shape_errors() -> None:
    with pytest.raises(DataError, match="party 'bank': the id table is empty"):
        normalize_ids([[]], "email", party="bank")
    with pytest.raises(DataError, match="different lengths"):
        normalize_ids([["a"], ["b", "c"]], "plain")
    with pytest.raises(ConfigurationError, match="at least one id column"):
        normalize_ids([], "plain")
    with pytest.raises(ConfigurationError, match=r"pass \[values\] for one column"):
        normalize_ids(["a@x.com", "b@x.com"], "email")


@pytest.mark.parametrize("code", ["", "0", "044", "1234", "x1", "+"])
def test_bad_country_code(code: str) -> None:
    with pytest.raises(ConfigurationError, match="default_country_code"):
        normalize_ids([["5551234567"]], "phone", default_country_code=code)


def test_unknown_kind() -> None:
    with pytest.raises(ConfigurationError, match="unknown id kind"):
        normalize_ids([["x"]], "ssn")


def test_pandas_columns() -> None:
    frame = pd.DataFrame({"phone": [5551234567, np.nan, 5559876543]})
    with pytest.raises(DataError, match="1 of 3 rows"):
        normalize_ids([frame["phone"]], "phone")
    frame = frame.dropna()
    assert normalize_ids([frame["phone"]], "phone") == ["+15551234567", "+15559876543"]


# ----------------------------------------------------------------------------- check_unique


def test_check_unique_accepts_unique_ids() -> None:
    check_unique(["a", "b", "c"], "bank")


def test_check_unique_counts_duplicates_without_values() -> None:
    ids = ["dup-one", "solo", "dup-one", "dup-two", "dup-two", "dup-one"]
    with pytest.raises(DataError) as err:
        check_unique(ids, "bank")
    message = str(err.value)
    assert "party 'bank'" in message
    assert "3 rows repeat an id" in message
    assert "2 distinct ids" in message
    assert "first repeating rows: 3, 5, 6 " in message
    assert "dup-" not in message and "solo" not in message


def test_duplicates_after_normalization() -> None:
    ids = normalize_ids([["Alice@Example.com", " alice@example.com"]], "email")
    with pytest.raises(DataError, match="1 rows repeat"):
        check_unique(ids, "insurer")


def test_check_unique_empty() -> None:
    with pytest.raises(DataError, match="party 'bank': the id table is empty"):
        check_unique([], "bank")


# ----------------------------------------------------------------------------- IdSpec


def test_id_spec_validation() -> None:
    spec = IdSpec(kind="email", columns=("email",))
    assert spec.case_sensitive is None and spec.default_country_code == "1"
    assert IdSpec("plain", "customer_id").columns == ("customer_id",)  # type: ignore[arg-type]
    assert IdSpec("phone", ["phone"], default_country_code="+44").default_country_code == "44"
    with pytest.raises(ConfigurationError, match="unknown id kind"):
        IdSpec("passport", ("id",))
    with pytest.raises(ConfigurationError, match="at least one"):
        IdSpec("plain", ())
    with pytest.raises(ConfigurationError, match="listed twice"):
        IdSpec("plain", ("a", "a"))
    with pytest.raises(ConfigurationError, match="non-empty"):
        IdSpec("plain", ("a", " "))
    with pytest.raises(ConfigurationError, match="default_country_code"):
        IdSpec("phone", ("p",), default_country_code="0")
    with pytest.raises(ConfigurationError, match="case-insensitively"):
        IdSpec("email", ("e",), case_sensitive=True)
    with pytest.raises(ConfigurationError, match="case_sensitive"):
        IdSpec("plain", ("e",), case_sensitive="yes")  # type: ignore[arg-type]


def test_id_spec_dict_round_trip() -> None:
    spec = IdSpec("plain", ("first", "last"), case_sensitive=False)
    assert IdSpec.from_dict(spec.to_dict()) == spec
    assert IdSpec.from_dict({"kind": "email", "columns": "email"}).columns == ("email",)
    with pytest.raises(ConfigurationError, match="unknown id spec key"):
        IdSpec.from_dict({"kind": "email", "columns": ["e"], "salt": "x"})
    with pytest.raises(ConfigurationError, match="needs 'kind' and 'columns'"):
        IdSpec.from_dict({"kind": "email"})


def test_id_spec_normalize_table() -> None:
    spec = IdSpec("email", ("email",))
    frame = pd.DataFrame({"email": [" A@x.com", "b@X.com"], "age": [30, 40]})
    assert spec.normalize(frame, party="bank") == ["a@x.com", "b@x.com"]
    assert spec.normalize({"email": ["C@x.com"]}, party="bank") == ["c@x.com"]
    with pytest.raises(DataError, match="party 'bank': id column\\(s\\) 'mail' not found"):
        IdSpec("email", ("mail",)).normalize(frame, party="bank")


def test_blocks_give_the_same_ids_and_the_same_error_as_the_whole_table():
    from vfm_flower.normalize import normalize_id_blocks

    values = [f" User{i}@Example.COM " for i in range(25)]
    blocks = list(normalize_id_blocks([values], "email", block=7))
    assert [len(b) for b in blocks] == [7, 7, 7, 4]
    assert sum(blocks, []) == normalize_ids([values], "email")
    broken = list(values)
    broken[3] = "not an email"
    broken[20] = ""
    with pytest.raises(DataError) as whole:
        normalize_ids([broken], "email", party="bank")
    got = []
    with pytest.raises(DataError) as streamed:
        for block in normalize_id_blocks([broken], "email", block=7, party="bank"):
            got.append(block)
    assert str(streamed.value) == str(whole.value)  # counts and rows over the whole table
    assert len(got) == 4  # reported once every block was read
