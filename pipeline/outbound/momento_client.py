"""Momento clients from Settings, their errors as ``MomentoError``, publish and cache calls.

With ``pipeline.outbound.subscriptions`` (and its asyncio twin) the only modules importing the
Momento SDK.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from momento import (
    CacheClient,
    CacheClientAsync,
    Configurations,
    CredentialProvider,
    TopicClient,
    TopicClientAsync,
    TopicConfigurations,
)
from momento.errors import MomentoErrorCode
from momento.responses import (
    CacheDelete,
    CacheGet,
    CacheSet,
    CreateCache,
    ListCaches,
    TopicPublish,
)

from pipeline.config import Settings
from pipeline.errors import MomentoError

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = timedelta(days=3650)
"""Topic client deadline: it bounds whole subscription streams, so it must be huge (E.1)."""
PUBLISH_TIMEOUT = timedelta(seconds=10)
"""A sane deadline for clients that only publish."""
DEFAULT_TTL = timedelta(hours=1)
LOCAL_DEFAULT = ("127.0.0.1", 8080)

_TRANSIENT = {
    MomentoErrorCode.TIMEOUT_ERROR,
    MomentoErrorCode.SERVER_UNAVAILABLE,
    MomentoErrorCode.INTERNAL_SERVER_ERROR,
    MomentoErrorCode.CANCELLED_ERROR,
    MomentoErrorCode.CONNECTION_ERROR,
}
_SIZE_LIMITS = ("size limit", "larger than max")


# -- clients -------------------------------------------------------------------------------------


def local_address(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of the local server, or None when settings point at real Momento."""
    if settings.momento_local:
        host, _, port = settings.momento_local.rpartition(":")
        return host, int(port)
    if settings.momento_api_key is not None:
        return None
    return LOCAL_DEFAULT


def credential_provider(settings: Settings) -> CredentialProvider:
    """MOMENTO_LOCAL wins; else MOMENTO_API_KEY (+ MOMENTO_ENDPOINT for v2 keys); else local."""
    local = local_address(settings)
    if local is not None:
        return CredentialProvider.for_momento_local(*local)
    assert settings.momento_api_key is not None
    key = settings.momento_api_key.get_secret_value()
    try:
        if settings.momento_endpoint:
            return CredentialProvider.from_api_key_v2(key, settings.momento_endpoint)
        return CredentialProvider.from_disposable_token(key)
    except Exception as exc:  # the SDK raises its own exception types and plain ones
        hint = "" if settings.momento_endpoint else " (v2 keys also need MOMENTO_ENDPOINT)"
        raise MomentoError(f"MOMENTO_API_KEY is not usable{hint}: {type(exc).__name__}") from exc


def cache_client(settings: Settings, *, default_ttl: timedelta = DEFAULT_TTL) -> CacheClient:
    """A sync CacheClient (constructor, not ``create``: that one crashes without eager connect)."""
    return CacheClient(Configurations.Laptop.latest(), credential_provider(settings), default_ttl)


def cache_client_async(
    settings: Settings, *, default_ttl: timedelta = DEFAULT_TTL
) -> CacheClientAsync:
    """An async CacheClient; create it inside the event loop that will use it."""
    configuration = Configurations.Laptop.latest()
    return CacheClientAsync(configuration, credential_provider(settings), default_ttl)


def _topic_configuration(timeout: timedelta, max_subscriptions: int) -> Any:
    configuration = TopicConfigurations.Default.latest().with_client_timeout(timeout)
    if max_subscriptions:
        configuration = configuration.with_max_subscriptions(max_subscriptions)
    return configuration


def topic_client(
    settings: Settings, *, timeout: timedelta = SUBSCRIBE_TIMEOUT, max_subscriptions: int = 0
) -> TopicClient:
    """A sync TopicClient; the default timeout suits subscribers (PUBLISH_TIMEOUT suits others)."""
    configuration = _topic_configuration(timeout, max_subscriptions)
    return TopicClient(configuration, credential_provider(settings))


def topic_client_async(
    settings: Settings, *, timeout: timedelta = SUBSCRIBE_TIMEOUT, max_subscriptions: int = 0
) -> TopicClientAsync:
    """An async TopicClient; create it inside the event loop that will use it."""
    configuration = _topic_configuration(timeout, max_subscriptions)
    return TopicClientAsync(configuration, credential_provider(settings))


def close_client(client: Any) -> None:
    """Close any SDK client (the sync CacheClient has no ``close``, only ``__exit__``)."""
    close = getattr(client, "close", None)
    if callable(close):
        close()
    else:
        client.__exit__(None, None, None)


# -- errors and one-shot helpers -----------------------------------------------------------------


def to_error(response: Any, action: str) -> MomentoError:
    """Turn an SDK ``*.Error`` response into MomentoError(code=MomentoErrorCode name)."""
    code: MomentoErrorCode = response.error_code
    message = str(response.message)
    transient = code in _TRANSIENT or (
        code is MomentoErrorCode.LIMIT_EXCEEDED_ERROR
        and not any(marker in message.lower() for marker in _SIZE_LIMITS)
    )
    return MomentoError(f"{action} failed: {message}", code=code.name, transient=transient)


def list_caches(settings: Settings, *, timeout: timedelta = timedelta(seconds=5)) -> list[str]:
    """The account's cache names: a real call that proves the credentials (``pipeline check``)."""
    configuration = Configurations.Laptop.latest().with_client_timeout(timeout)
    with CacheClient(configuration, credential_provider(settings), DEFAULT_TTL) as client:
        response = client.list_caches()
    if isinstance(response, ListCaches.Error):
        raise to_error(response, "list caches")
    assert isinstance(response, ListCaches.Success)
    return [cache.name for cache in response.caches]


def create_cache(client: CacheClient, cache: str) -> bool:
    """Create ``cache``; True if it was created, False if it already existed."""
    response = client.create_cache(cache)
    if isinstance(response, CreateCache.Error):
        raise to_error(response, f"create cache {cache}")
    return isinstance(response, CreateCache.Success)


def publish(client: TopicClient, cache: str, topic: str, value: str | bytes) -> None:
    """Publish once (a blind retry could duplicate the message: Momento never dedupes)."""
    response = client.publish(cache, topic, value)
    if isinstance(response, TopicPublish.Error):
        raise to_error(response, f"publish to {cache}/{topic}")


async def publish_async(
    client: TopicClientAsync, cache: str, topic: str, value: str | bytes
) -> None:
    """Async ``publish``."""
    response = await client.publish(cache, topic, value)
    if isinstance(response, TopicPublish.Error):
        raise to_error(response, f"publish to {cache}/{topic}")


def cache_set(
    client: CacheClient,
    cache: str,
    key: str | bytes,
    value: str | bytes,
    ttl: timedelta | None = None,
) -> None:
    """Set ``key``; ``ttl`` None uses the client's default TTL."""
    response = client.set(cache, key, value, ttl)
    if isinstance(response, CacheSet.Error):
        raise to_error(response, f"set in {cache}")


def cache_get(client: CacheClient, cache: str, key: str | bytes) -> bytes | None:
    """The value of ``key``, or None on a miss."""
    response = client.get(cache, key)
    if isinstance(response, CacheGet.Hit):
        value: bytes = response.value_bytes
        return value
    if isinstance(response, CacheGet.Error):
        raise to_error(response, f"get from {cache}")
    return None


def cache_delete(client: CacheClient, cache: str, key: str | bytes) -> None:
    """Delete ``key`` (a missing key is fine)."""
    response = client.delete(cache, key)
    if isinstance(response, CacheDelete.Error):
        raise to_error(response, f"delete from {cache}")
