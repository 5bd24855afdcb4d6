"""SQLAlchemy 2.0 models; Alembic migrations are generated from (and checked against) these."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EVENT_TIME_MIN_MS = 946_684_800_000
"""Earliest ``event_timestamp`` (epoch ms) the receiver accepts and roll-ups count: 2000-01-01."""
EVENT_TIME_MAX_MS = 4_102_444_800_000
"""End (exclusive) of that range, 2100-01-01 UTC.

Outside it a value is a unit mistake (seconds, micro- or nanoseconds), not a time: roll-ups skip
such stored rows rather than compute a window start Postgres cannot hold.
"""


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints predictably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB}


class EventSource(enum.StrEnum):
    """How an event reached the pipeline."""

    WEBHOOK = "webhook"
    SUBSCRIPTION = "subscription"


class Event(Base):
    """One Momento topic message, stored once.

    ``idempotency_key`` is the natural key within (cache, topic): a webhook is identified by its
    event_timestamp and sequence number (numbers repeat after a reset, timestamps do not), a
    subscription item by its sequence page and number. A redelivered or retried event hits the
    unique constraint and is ignored.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("cache", "topic", "idempotency_key"),
        Index("ix_events_topic_sequence", "cache", "topic", "topic_sequence_number"),
        Index("ix_events_topic_event_time", "cache", "topic", "event_timestamp"),
        Index("ix_events_received_at", "received_at"),
        Index("ix_events_topic_epoch_sequence", "cache", "topic", "epoch", "topic_sequence_number"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    cache: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    topic_sequence_number: Mapped[int] = mapped_column(BigInteger)
    sequence_page: Mapped[int | None] = mapped_column(BigInteger)
    event_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    publish_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    token_id: Mapped[str] = mapped_column(String(255), default="")
    text: Mapped[str] = mapped_column(Text)
    raw_body: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    source: Mapped[EventSource] = mapped_column(
        Enum(EventSource, name="event_source", values_callable=lambda e: [m.value for m in e])
    )
    idempotency_key: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int | None] = mapped_column(Integer)
    arrival: Mapped[str | None] = mapped_column(String(16))


class DeadLetter(Base):
    """Input or work that cannot succeed by retrying, kept with the reason for a human or replay."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_kind_created_at", "kind", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TopicCursorRow(Base):
    """A topic's sequencing state (sequencing.state.TopicCursor as JSON), one row per topic.

    The row is locked FOR UPDATE while a batch is sequenced, in the transaction that stores the
    batch, so concurrent workers take turns per topic and no event is fed twice or skipped.
    """

    __tablename__ = "topic_cursors"

    cache: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB)
    newest_received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IngestBatch(Base):
    """Batches already stored, by Celery task id: a redelivered batch is recognised and skipped."""

    __tablename__ = "ingest_batches"
    __table_args__ = (Index("ix_ingest_batches_created_at", "created_at"),)

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LostRange(Base):
    """Sequence numbers Momento published that never arrived (declared after the reorder window)."""

    __tablename__ = "lost_ranges"
    __table_args__ = (
        Index("ix_lost_ranges_topic_epoch", "cache", "topic", "epoch", "first_seq"),
        Index("ix_lost_ranges_declared_at", "declared_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    cache: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    epoch: Mapped[int] = mapped_column(Integer)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    declared_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DuplicateDelivery(Base):
    """A delivery of a message already received (Momento, or a publisher, sent it again)."""

    __tablename__ = "duplicate_deliveries"
    __table_args__ = (
        Index("ix_duplicate_deliveries_topic_received", "cache", "topic", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    cache: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    epoch: Mapped[int] = mapped_column(Integer)
    topic_sequence_number: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Rollup(Base):
    """Per (cache, topic, window) aggregates, recomputed idempotently by aggregation.rollups.

    Events fall in windows by event_timestamp, duplicate deliveries by received_at and lost
    ranges by declared_at. ``published_at`` is set once the window's summary was published.
    """

    __tablename__ = "rollups"
    __table_args__ = (
        Index("ix_rollups_window_start", "window_start"),
        Index(
            "ix_rollups_unpublished",
            "window_s",
            "window_start",
            postgresql_where=text("published_at IS NULL"),
        ),
    )

    cache: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    first_seq: Mapped[int | None] = mapped_column(BigInteger)
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    out_of_order: Mapped[int] = mapped_column(BigInteger)
    resets: Mapped[int] = mapped_column(BigInteger)
    duplicates: Mapped[int] = mapped_column(BigInteger)
    gaps: Mapped[int] = mapped_column(BigInteger)
    lost: Mapped[int] = mapped_column(BigInteger)
    distinct_tokens: Mapped[int] = mapped_column(BigInteger)
    publish_latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    publish_latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    publish_latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    receive_latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    receive_latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    receive_latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RollupWatermark(Base):
    """How far roll-ups of one window length have read one source table, by id.

    ``source`` is events, duplicates or lost. Rows with id <= ``settled_id`` are rolled up for
    good. Rows up to ``scanned_id`` were rolled up as far as they were visible; rows of the
    transactions in ``unsettled_xids`` (running at that scan) may still appear below it, so they
    are looked for once those transactions end (see pipeline.aggregation.watermark).
    """

    __tablename__ = "rollup_watermarks"

    window_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    settled_id: Mapped[int] = mapped_column(BigInteger)
    scanned_id: Mapped[int] = mapped_column(BigInteger)
    unsettled_xids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxKind(enum.StrEnum):
    """What an outbox row asks Momento to do."""

    TOPIC_PUBLISH = "topic_publish"
    CACHE_SET = "cache_set"
    CACHE_DELETE = "cache_delete"


class OutboxStatus(enum.StrEnum):
    """Where an outbox row is: waiting to be sent, sent, or given up on (see dead_letters)."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


def _enum_values(kind: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in kind]


class OutboxMessage(Base):
    """One result to send to Momento, written in the transaction that records the result.

    Unique on (route, event_id, kind): a workflow that runs again adds nothing. Rows of an ordered
    route carry an ``ordering_key`` and are sent one at a time, in id order, per key.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("route", "event_id", "kind"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_ordering_key_status", "ordering_key", "status", "id"),
        Index("ix_outbox_target_cache_target_key", "target_cache", "target_key", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    route: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[OutboxKind] = mapped_column(
        Enum(OutboxKind, name="outbox_kind", values_callable=_enum_values)
    )
    target_cache: Mapped[str] = mapped_column(String(255))
    target_topic: Mapped[str | None] = mapped_column(String(255))
    target_key: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    message_id: Mapped[str] = mapped_column(String(300))
    ordering_key: Mapped[str | None] = mapped_column(Text)
    status: Mapped[OutboxStatus] = mapped_column(
        Enum(OutboxStatus, name="outbox_status", values_callable=_enum_values)
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


def outbox_status_is(status: OutboxStatus) -> Any:
    """``outbox.status = '<status>'`` with the status written in the SQL, not bound.

    Statuses are skewed (nearly every row is sent, a few are pending). Given as a parameter, a
    prepared statement's generic plan assumes an average status and scans a key's rows by id
    instead of looking up its few pending ones, a cost that grows with every row sent.
    """
    return OutboxMessage.status == literal_column(f"'{status.value}'")


class WorkflowRun(Base):
    """A dispatched run of an unordered route (or a replay) of one event; lost ones are re-sent."""

    __tablename__ = "workflow_runs"
    __table_args__ = (Index("ix_workflow_runs_status_started_at", "status", "started_at"),)

    route: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RouteCursor(Base):
    """How far an ordered route has run one topic: the last finished (epoch, seq, event id).

    ``inflight_event_id`` is the event whose canvas runs now; ``attempts``/``retry_at`` hold back
    an event whose workflow failed until its backoff passed.
    """

    __tablename__ = "route_cursors"

    route: Mapped[str] = mapped_column(String(255), primary_key=True)
    cache: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, server_default="0")
    seq: Mapped[int] = mapped_column(BigInteger, server_default="-1")
    event_id: Mapped[int] = mapped_column(BigInteger, server_default="0")
    inflight_event_id: Mapped[int | None] = mapped_column(BigInteger)
    inflight_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    released: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SubscriptionLease(Base):
    """Which listener consumes a subscribed topic, until when, and where the topic resumes.

    ``holder`` renews ``expires_at`` while it lives; an expired lease may be taken by any other
    listener. (``resume_seq``, ``resume_page``) is the first item not yet durable: everything
    before it is in the broker or in Postgres, so a new holder subscribes from there.
    """

    __tablename__ = "subscription_leases"

    cache: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resume_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    resume_page: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Listener(Base):
    """A running ``pipeline listen`` process, seen at its last lease round."""

    __tablename__ = "listeners"

    holder: Mapped[str] = mapped_column(String(255), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


SEQ_DIGITS = 40
"""Change sequence numbers are compared as integers of up to 40 digits (DynamoDB's)."""


class ChangeRecordRow(Base):
    """One change record (``POST /changes/{source}``), stored once.

    ``idempotency_key`` is the natural key within the source: ``ddb:<eventID>`` for a DynamoDB
    stream record, ``seq:<sha256 of table, keys, seq>`` for the plain shape. ``applied`` tells
    whether the record was newer than everything before it for its item (and so went to the
    cache and topics); a record that arrived after a newer one is kept, not applied.
    """

    __tablename__ = "change_records"
    __table_args__ = (
        UniqueConstraint("source", "idempotency_key"),
        Index("ix_change_records_item_seq", "source", "table_name", "item_key", "seq"),
        Index("ix_change_records_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    table_name: Mapped[str] = mapped_column(String(255))
    item_key: Mapped[str] = mapped_column(Text)
    op: Mapped[str] = mapped_column(String(8))
    event_name: Mapped[str | None] = mapped_column(String(8))
    seq: Mapped[Decimal] = mapped_column(Numeric(SEQ_DIGITS, 0))
    keys: Mapped[dict[str, Any]] = mapped_column(JSONB)
    new_image: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    old_image: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    applied: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChangeItem(Base):
    """The newest change applied to one item: the guard that keeps caches from going stale.

    A record is applied only if its ``seq`` is greater than the item's. A REMOVE leaves the row
    with ``deleted`` set (a tombstone), so a MODIFY delivered late cannot bring the item back.
    """

    __tablename__ = "change_items"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    table_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    item_key: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[Decimal] = mapped_column(Numeric(SEQ_DIGITS, 0))
    deleted: Mapped[bool] = mapped_column(Boolean)
    record_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
