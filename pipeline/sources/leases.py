"""Which listener consumes which subscribed topic: leases in Postgres, shared out fairly.

Any number of ``pipeline listen`` processes, on any machines, share the subscribed topics. Each
topic has one lease row; its holder renews it every round (``ROUND_S``) and it expires after
``LEASE_TTL_S`` without renewal, so when a listener dies another takes its topics within
``LEASE_TTL_S + ROUND_S`` (under 10 s) and resumes from the position stored in the lease (just
past the newest stored item if its holder died before recording one). Every
round each listener also counts the live listeners and keeps its fair share (``fair_share``):
it takes free or expired leases while it holds fewer, and gives back its extra topics when a
listener joined, so topics rebalance as listeners come and go. Leases change hands in single
``UPDATE`` statements guarded by holder and expiry, so two listeners never hold one topic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

TopicKey = tuple[str, str]
Position = tuple[int, int]
"""(sequence number, page) to resume at: the first item not yet durable; (0, 0) is "live"."""

ROUND_S = 1.5
LEASE_TTL_S = 6.0
LISTENER_FORGET_S = 300.0


def fair_share(topics: int, listeners: int) -> int:
    """How many topics one of ``listeners`` live listeners should hold (at least 1 each)."""
    return math.ceil(topics / max(1, listeners)) if topics else 0


@dataclass
class Round:
    """What one lease round decided for this listener."""

    held: dict[TopicKey, Position] = field(default_factory=dict)
    """Every lease it holds now, with the stored position of the newly taken ones."""
    taken: list[TopicKey] = field(default_factory=list)
    lost: list[TopicKey] = field(default_factory=list)
    """Leases it believed it held but another listener has (it renewed too late)."""
    surplus: list[TopicKey] = field(default_factory=list)
    """Leases past its fair share: stop consuming them, then ``release`` them."""
    listeners: int = 1


_SEEN = text(
    "INSERT INTO listeners (holder) VALUES (:me) ON CONFLICT (holder) DO UPDATE SET seen_at = now()"
)
_FORGET = text("DELETE FROM listeners WHERE seen_at < now() - make_interval(secs => :forget_s)")
_LIVE = text("SELECT count(*) FROM listeners WHERE seen_at > now() - make_interval(secs => :ttl_s)")
_ENSURE = text(
    "INSERT INTO subscription_leases (cache, topic) "
    "SELECT * FROM unnest(CAST(:caches AS text[]), CAST(:topics AS text[])) "
    "ON CONFLICT DO NOTHING"
)
_RENEW = text(
    "UPDATE subscription_leases l SET expires_at = now() + make_interval(secs => :ttl_s), "
    "resume_seq = CASE WHEN p.seq >= 0 THEN p.seq ELSE l.resume_seq END, "
    "resume_page = CASE WHEN p.seq >= 0 THEN p.page ELSE l.resume_page END, updated_at = now() "
    "FROM unnest(CAST(:caches AS text[]), CAST(:topics AS text[]), CAST(:seqs AS bigint[]), "
    "CAST(:pages AS bigint[])) AS p(cache, topic, seq, page) "
    "WHERE l.cache = p.cache AND l.topic = p.topic AND l.holder = :me "
    "RETURNING l.cache, l.topic"
)
_TAKE = text(
    "UPDATE subscription_leases l SET holder = :me, "
    "expires_at = now() + make_interval(secs => :ttl_s), updated_at = now() "
    "FROM (SELECT cache, topic FROM subscription_leases "
    "      WHERE (holder IS NULL OR expires_at < now()) "
    "        AND (cache, topic) IN (SELECT * FROM unnest(CAST(:caches AS text[]), "
    "                                                     CAST(:topics AS text[]))) "
    "      ORDER BY updated_at, cache, topic LIMIT :n FOR UPDATE SKIP LOCKED) AS free "
    "WHERE l.cache = free.cache AND l.topic = free.topic "
    "RETURNING l.cache, l.topic, l.resume_seq, l.resume_page"
)
_RELEASE = text(
    "UPDATE subscription_leases SET holder = NULL, expires_at = NULL, updated_at = now(), "
    "resume_seq = CASE WHEN :seq >= 0 THEN :seq ELSE resume_seq END, "
    "resume_page = CASE WHEN :seq >= 0 THEN :page ELSE resume_page END "
    "WHERE cache = :cache AND topic = :topic AND holder = :me"
)
_GONE = text("DELETE FROM listeners WHERE holder = :me")
_LAST_STORED = text(
    "SELECT sequence_page, topic_sequence_number FROM events "
    "WHERE cache = :cache AND topic = :topic AND source = 'subscription' "
    "AND sequence_page IS NOT NULL ORDER BY id DESC LIMIT 1"
)


def _arrays(keys: Sequence[TopicKey]) -> dict[str, list[str]]:
    return {"caches": [c for c, _ in keys], "topics": [t for _, t in keys]}


def lease_round(
    conn: Connection,
    me: str,
    topics: Sequence[TopicKey],
    held: Mapping[TopicKey, Position | None],
    *,
    excluded: Iterable[TopicKey] = (),
    ttl_s: float = LEASE_TTL_S,
) -> Round:
    """One round for listener ``me``, in one transaction: say it is alive, renew what it holds
    (storing each durable position given; None keeps the stored one), and take or give up
    leases toward its fair share of ``topics``. ``excluded`` topics are not taken (refused)."""
    conn.execute(_SEEN, {"me": me})
    conn.execute(_FORGET, {"forget_s": LISTENER_FORGET_S})
    conn.execute(_ENSURE, _arrays(topics))
    live = int(conn.execute(_LIVE, {"ttl_s": ttl_s}).scalar_one())
    mine = list(held)
    positions = [held[key] or (-1, 0) for key in mine]
    renewed = {
        (row.cache, row.topic)
        for row in conn.execute(
            _RENEW,
            {
                **_arrays(mine),
                "seqs": [seq for seq, _ in positions],
                "pages": [page for _, page in positions],
                "me": me,
                "ttl_s": ttl_s,
            },
        )
    }
    result = Round(listeners=live)
    result.lost = [key for key in mine if key not in renewed]
    kept = [key for key in mine if key in renewed]
    share = fair_share(len(topics), live)
    result.surplus = kept[share:] if len(kept) > share else []
    result.held = {key: held[key] or (0, 0) for key in kept}
    wanted = share - len(kept)
    skip = set(excluded) | set(kept)
    candidates = [key for key in topics if key not in skip]
    if wanted > 0 and candidates:
        rows = conn.execute(
            _TAKE, {**_arrays(candidates), "me": me, "ttl_s": ttl_s, "n": wanted}
        ).all()
        for row in rows:
            key = (row.cache, row.topic)
            position = (int(row.resume_seq), int(row.resume_page))
            result.held[key] = position if position != (0, 0) else last_stored(conn, key)
            result.taken.append(key)
    return result


def last_stored(conn: Connection, key: TopicKey) -> Position:
    """Just past the topic's newest stored subscription item, or (0, 0) ("live") if none: where
    a topic whose holder died before it ever recorded a position resumes."""
    row = conn.execute(_LAST_STORED, {"cache": key[0], "topic": key[1]}).first()
    return (int(row.topic_sequence_number) + 1, int(row.sequence_page)) if row else (0, 0)


def release(conn: Connection, me: str, key: TopicKey, position: Position | None) -> None:
    """Give a lease back (storing its durable position, if known) for any listener to take."""
    seq, page = position if position is not None else (-1, 0)
    conn.execute(_RELEASE, {"me": me, "cache": key[0], "topic": key[1], "seq": seq, "page": page})


def leave(conn: Connection, me: str) -> None:
    """Forget listener ``me`` (it stopped), so the others' fair share grows at once."""
    conn.execute(_GONE, {"me": me})
