"""SQLAlchemy 2.0 models; Alembic migrations are generated from (and checked against) these."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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
