"""DynamoDB JSON to plain JSON: every type, exact numbers, and round trips."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.dynamodb_json import DynamoJsonError, dumps, loads, unmarshal, unmarshal_item
from tests.change_support import marshal


def test_every_type_unmarshals_to_its_plain_value() -> None:
    item = {
        "s": {"S": "text"},
        "n": {"N": "42"},
        "f": {"N": "-0.1"},
        "b": {"B": "AAEC"},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "m": {"M": {"inner": {"N": "1e3"}}},
        "l": {"L": [{"S": "a"}, {"N": "2"}]},
        "ss": {"SS": ["x", "y"]},
        "ns": {"NS": ["1", "2.50"]},
        "bs": {"BS": ["AA==", "AQ=="]},
    }
    assert unmarshal_item(item) == {
        "s": "text",
        "n": 42,
        "f": Decimal("-0.1"),
        "b": "AAEC",
        "t": True,
        "z": None,
        "m": {"inner": Decimal("1e3")},
        "l": ["a", 2],
        "ss": ["x", "y"],
        "ns": [1, Decimal("2.50")],
        "bs": ["AA==", "AQ=="],
    }


@pytest.mark.parametrize(
    "number",
    ["0.1000000000000000000000000000000000001", "12345678901234567890123456789012345678",
     "-9.99e-130", "1E+125", "3.14159265358979323846264338327950288"],
)  # fmt: skip
def test_numbers_keep_every_digit_through_dumps(number: str) -> None:
    value = unmarshal({"N": number})
    written = dumps({"v": value})
    assert Decimal(written[5:-1]) == Decimal(number)
    assert loads(written)["v"] == Decimal(number)
    # A float would have lost digits: the written number is not what float() gives back.
    if len(number.replace("-", "").replace(".", "")) > 17:
        assert written[5:-1] != repr(float(number))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"S": 1}, "must be a string"),
        ({"N": "abc"}, "not a number"),
        ({"N": "NaN"}, "not a finite number"),
        ({"N": "1" * 101}, "too long"),
        ({"BOOL": "yes"}, "true or false"),
        ({"NULL": False}, "NULL must be true"),
        ({"M": []}, "M must be an object"),
        ({"L": {}}, "L must be an array"),
        ({"SS": "a"}, "SS must be an array"),
        ({"NS": ["x"]}, "not a number"),
        ({"X": "?"}, "unknown DynamoDB type 'X'"),
        ({"S": "a", "N": "1"}, "one typed value"),
        ("plain", "one typed value"),
    ],
)
def test_bad_values_name_the_problem(value: Any, message: str) -> None:
    with pytest.raises(DynamoJsonError, match=message):
        unmarshal(value, "new.attr")


def test_errors_say_where() -> None:
    with pytest.raises(DynamoJsonError, match=r"item\.address\.zip"):
        unmarshal_item({"address": {"M": {"zip": {"N": "x"}}}})


def test_too_deep_is_refused() -> None:
    value: dict[str, Any] = {"S": "leaf"}
    for _ in range(40):
        value = {"M": {"a": value}}
    with pytest.raises(DynamoJsonError, match="nested deeper"):
        unmarshal(value)


def test_nan_is_not_json() -> None:
    with pytest.raises(ValueError, match="NaN"):
        loads('{"a": NaN}')


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=20)
    | st.integers(min_value=-(10**38), max_value=10**38)
    | st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: d != d.to_integral_value() or "E" in str(d)
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(min_size=1, max_size=8), plain, max_size=6))
def test_marshal_then_unmarshal_is_the_identity(item: dict[str, Any]) -> None:
    dynamo = {name: marshal(value) for name, value in item.items()}
    assert unmarshal_item(dynamo) == item


@given(st.dictionaries(st.text(min_size=1, max_size=8), plain, max_size=6))
def test_dumps_then_loads_is_exact(item: dict[str, Any]) -> None:
    assert loads(dumps(item)) == item
