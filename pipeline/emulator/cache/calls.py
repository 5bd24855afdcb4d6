"""What every cache-call family shares: the cache header, status mapping and the keyspace.

Status codes follow MOMENTO.md section D: an unknown cache is NOT_FOUND, a malformed request
INVALID_ARGUMENT, and a call on a key that holds another type, or an increment of a value that is
not an integer, FAILED_PRECONDITION, as Momento answers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from pipeline.emulator.state import CacheNotFound, Keyspace, Store, WrongType

logger = logging.getLogger(__name__)

Context = Any  # grpc.ServicerContext; grpc ships no type information
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class BadRequest(ValueError):
    """The request is malformed (INVALID_ARGUMENT)."""


class FailedPrecondition(Exception):
    """The stored data does not allow the call, e.g. incrementing a non-integer."""


@dataclass(frozen=True)
class ItemLimits:
    """Size limits of stored data."""

    max_item_bytes: int = 5 * 1024 * 1024


def abort(context: Context, code: grpc.StatusCode, details: str, err: str = "") -> NoReturn:
    """End the call with ``code`` (and an ``err`` trailer the SDK reads on RESOURCE_EXHAUSTED)."""
    if err:
        context.set_trailing_metadata((("err", err),))
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")


def unimplemented(name: str) -> Callable[[Any, Any, Context], NoReturn]:
    """A servicer method answering UNIMPLEMENTED with one log line (the generated base class
    raises NotImplementedError, which grpc logs with a traceback)."""

    def refuse(self: Any, request: Any, context: Context) -> NoReturn:
        logger.warning("unimplemented call method=%s", name)
        abort(context, grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served by the local server")

    refuse.__name__ = name
    return refuse


def cache_header(context: Context) -> str:
    """The cache name: data-plane calls carry it in the ``cache`` metadata header only."""
    for key, value in context.invocation_metadata():
        if key == "cache":
            return str(value)
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, "missing cache header")


def require_ttl(ttl_ms: int) -> None:
    """Every write names a TTL (the SDK sends its default); zero is malformed."""
    if ttl_ms <= 0:
        raise BadRequest("ttl_milliseconds must be > 0")


def parse_integer(value: bytes, what: str) -> int:
    """A stored value as the integer an increment works on (ASCII decimal, as Momento keeps it)."""
    try:
        number = int(value.decode("ascii"), 10)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FailedPrecondition(f"{what} is not an integer: {value[:64]!r}") from exc
    return number


def add_int64(current: int, amount: int, what: str) -> int:
    """``current + amount``, refusing to leave the signed 64-bit range."""
    total = current + amount
    if not INT64_MIN <= total <= INT64_MAX:
        raise FailedPrecondition(f"incrementing {what} by {amount} overflows a 64-bit integer")
    return total


class Calls:
    """Base of the call families: the store, and one atomic keyspace per call."""

    def __init__(self, store: Store, limits: ItemLimits) -> None:
        self._store = store
        self._item_limits = limits

    @contextmanager
    def _items(self, context: Context) -> Iterator[Keyspace]:
        """The request's cache under the store lock; errors become the right status."""
        cache = cache_header(context)
        try:
            with self._store.keyspace(cache) as items:
                yield items
        except CacheNotFound:
            abort(context, grpc.StatusCode.NOT_FOUND, f"cache not found: {cache}")
        except WrongType as exc:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except FailedPrecondition as exc:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except BadRequest as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _check_size(self, context: Context, size: int) -> None:
        limit = self._item_limits.max_item_bytes
        if size > limit:
            abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"item of {size} bytes exceeds {limit}",
                "item_size_limit_exceeded",
            )
