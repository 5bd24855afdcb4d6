"""DynamoDB JSON (``{"S": "x"}``, ``{"N": "1.5"}``, ...) to plain JSON values, exactly.

Numbers (``N``, ``NS``) become ``Decimal``: a stream record's ``"N": "0.1"`` or a 38-digit integer
keeps every digit, where a float would round. ``dumps`` writes Decimals as JSON numbers digit for
digit. Binary (``B``, ``BS``) stays the base64 text the stream carries; sets become lists.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

import simplejson

TYPES = ("S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS")
MAX_DEPTH = 32
"""DynamoDB nests documents at most 32 levels deep; deeper input is not a stream record."""
MAX_NUMBER_CHARS = 100
"""DynamoDB numbers have at most 38 significant digits; 100 characters leave room for signs and
exponents, and keep a hostile body from costing a quadratic ``int()`` conversion."""


class DynamoJsonError(ValueError):
    """The value is not DynamoDB JSON; the message names where (``new.address.zip``)."""


def unmarshal_item(item: Any, where: str = "item") -> dict[str, Any]:
    """A DynamoDB JSON map of attributes (``Keys``, ``NewImage``) as a plain dict."""
    if not isinstance(item, dict):
        raise DynamoJsonError(f"{where} must be an object of attributes, got {_kind(item)}")
    return {name: unmarshal(value, f"{where}.{name}") for name, value in item.items()}


def unmarshal(value: Any, where: str = "value", depth: int = 0) -> Any:
    """One typed DynamoDB attribute value (``{"S": "x"}``) as a plain value."""
    if depth > MAX_DEPTH:
        raise DynamoJsonError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, dict) or len(value) != 1:
        raise DynamoJsonError(
            f"{where} must be one typed value like {{\"S\": \"text\"}}, got {_kind(value)}"
        )
    ((tag, inner),) = value.items()
    if tag == "S":
        return _string(inner, where)
    if tag == "N":
        return _number(inner, where)
    if tag == "B":
        return _string(inner, where)
    if tag == "BOOL":
        if not isinstance(inner, bool):
            raise DynamoJsonError(f"{where}: BOOL must be true or false, got {_kind(inner)}")
        return inner
    if tag == "NULL":
        if inner is not True:
            raise DynamoJsonError(f"{where}: NULL must be true, got {inner!r}")
        return None
    if tag == "M":
        if not isinstance(inner, dict):
            raise DynamoJsonError(f"{where}: M must be an object, got {_kind(inner)}")
        return {k: unmarshal(v, f"{where}.{k}", depth + 1) for k, v in inner.items()}
    if tag == "L":
        if not isinstance(inner, list):
            raise DynamoJsonError(f"{where}: L must be an array, got {_kind(inner)}")
        return [unmarshal(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(inner)]
    if tag in ("SS", "BS", "NS"):
        if not isinstance(inner, list):
            raise DynamoJsonError(f"{where}: {tag} must be an array, got {_kind(inner)}")
        convert = _number if tag == "NS" else _string
        return [convert(v, f"{where}[{i}]") for i, v in enumerate(inner)]
    raise DynamoJsonError(f"{where}: unknown DynamoDB type {tag!r}; known: {', '.join(TYPES)}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DynamoJsonError(f"{where} must be a string, got {_kind(value)}")
    return value


def _number(value: Any, where: str) -> Decimal | int:
    """A DynamoDB number: an int when written as digits, else an exact Decimal."""
    text = _string(value, where)
    if len(text) > MAX_NUMBER_CHARS:
        raise DynamoJsonError(f"{where}: {len(text)} characters is too long for a DynamoDB number")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise DynamoJsonError(f"{where}: {text!r} is not a number") from None
    if not number.is_finite():
        raise DynamoJsonError(f"{where}: {text!r} is not a finite number")
    if text.lstrip("-").isdigit():
        return int(text)
    return number


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON that writes Decimals as the numbers they are, digit for digit.

    Values without a Decimal go through the standard library's encoder (several times faster);
    the same value always takes the same path, so its text never changes.
    """
    try:
        return json.dumps(
            value, allow_nan=False, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys
        )
    except TypeError:
        pass
    return simplejson.dumps(
        value,
        use_decimal=True,
        allow_nan=False,
        separators=(",", ":"),
        ensure_ascii=False,
        sort_keys=sort_keys,
    )


def loads(text: str | bytes) -> Any:
    """JSON whose non-integral numbers read as Decimal (the inverse of ``dumps``); NaN and
    Infinity, which JSON does not have, are refused (ValueError)."""
    return simplejson.loads(text, use_decimal=True, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
