"""Exceptions raised by momento-pipeline.

PipelineError
├── ConfigError                 an environment value is invalid (raised at start)
├── ServiceError                an embedded Postgres/broker could not start or stop
│   ├── StoreUnavailable        a store is unreachable or not migrated (one line: URL, what to do)
│   ├── NoPipelineData          a read-only command found no data folder to read
│   ├── StackRunning            another `pipeline up` already runs on this data folder
│   └── BeatRunning             another beat already runs on this broker
├── RoutesError                 the routes file is unreadable or invalid
├── MomentoError                the Momento SDK returned an error (see momento_client)
└── RejectedWebhook             a webhook request was refused; carries code and status_code
    ├── BadSignature      401   missing or wrong momento-signature
    ├── BadApiKey         401   change records: missing or wrong API key (or basic auth)
    ├── StaleEvent        401   publish_timestamp outside the replay window
    ├── MalformedBody     400   not JSON, or fields of the wrong type
    ├── InvalidSource     400   change records: the path's {source} is not a valid name
    │   └── TimestampOutOfRange 400 event_timestamp outside the accepted range
    ├── UnsupportedMediaType 415 content-type is not JSON
    └── BodyTooLarge      413   body longer than the configured limit
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A setting is invalid; the message names the variable, the value and what is allowed."""


class ServiceError(PipelineError):
    """An embedded service failed to start, answer or stop."""


class StoreUnavailable(ServiceError):
    """Postgres or the broker cannot be used; the message names it, its URL and what to do."""


class NoPipelineData(ServiceError):
    """A read-only command found no pipeline data where the data-folder rule points."""


class StackRunning(ServiceError):
    """Another `pipeline up` holds this data folder; the message says where its parts are."""


class BeatRunning(ServiceError):
    """Another beat holds the broker's beat lock; the message names the holder."""


class RoutesError(PipelineError):
    """The routes file cannot be used; the message names the file, line and problem."""


class MomentoError(PipelineError):
    """A Momento call failed; ``transient`` tells whether a retry may succeed."""

    def __init__(self, message: str, *, code: str = "UNKNOWN", transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


class RejectedWebhook(PipelineError):
    """A webhook request was refused before anything was enqueued."""

    code = "rejected"
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadSignature(RejectedWebhook):
    """The momento-signature header is missing or matches no configured secret."""

    code = "bad_signature"
    status_code = 401


class BadApiKey(RejectedWebhook):
    """A change-record request carries no API key (nor basic auth) matching a configured one."""

    code = "bad_api_key"
    status_code = 401


class StaleEvent(RejectedWebhook):
    """The publish_timestamp is older than the replay window or too far in the future."""

    code = "stale_event"
    status_code = 401


class MalformedBody(RejectedWebhook):
    """The body is not a JSON object with Momento's fields of the right types."""

    code = "malformed_body"
    status_code = 400


class InvalidSource(RejectedWebhook):
    """The ``{source}`` of ``POST /changes/{source}`` is not a valid name."""

    code = "invalid_source"
    status_code = 400


class TimestampOutOfRange(MalformedBody):
    """The event_timestamp is of the right type but outside the range the pipeline accepts."""

    code = "timestamp_out_of_range"
    status_code = 400


class UnsupportedMediaType(RejectedWebhook):
    """The request's content-type is not JSON."""

    code = "unsupported_media_type"
    status_code = 415


class BodyTooLarge(RejectedWebhook):
    """The body is longer than the configured limit."""

    code = "body_too_large"
    status_code = 413
