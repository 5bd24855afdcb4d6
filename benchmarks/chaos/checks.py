"""What a chaos run did to the events: counts from Postgres and the outbound topics, and targets.

Definitions (one run uses one cache, ``chaos-<scenario>``, so every count is of that cache):

- **acked**: distinct events (topic, sequence number) with at least one delivery answered 2xx.
- **stored**: distinct events of the cache in ``events``; **lost**: acked but not stored when the
  drain deadline passed; **duplicated rows**: rows beyond one per (topic, sequence number);
  **phantom**: stored events that were never sent.
- **outbox not sent**: stored events without an outbox row of the route in status ``sent``.
- **outbound**: what the local Momento server numbered on each ``t-N-out`` topic, read back from
  sequence number 1 with the official SDK after the drain (the server retains every message of
  the run), so it is the publish order itself. **Outbound missing**: stored events whose result
  never appeared there; **outbound duplicated**: messages whose envelope id (``<event id>:<route>``)
  was already published on that topic. The docs allow one resend per message in flight when a
  worker dies (a publish Momento accepted before its row was marked sent), so duplicates are
  held to at most 2 per pool process per disruption (the ordered sender has at most two events'
  rows sent but not yet marked).
- **Order inversion**: take an outbound topic's messages in publish order, skip repeats of an id
  already seen, and map each to its source event's (epoch, topic sequence number). A message is
  an inversion when an earlier message on the same topic came from a higher (epoch, sequence
  number), unless its source event was *run late*: the route's cursor had already passed the
  number, which the sequencer had declared lost, when the event was stored. Such a run is
  dispatched on its own (``pipeline.runs.dispatch_late``: a ``workflow_runs`` row written when it
  is dispatched and finished by a later transaction, so ``finished_at > started_at`` or still
  NULL), while an in-order run's row is written by the statement that commits its result
  (``started_at = finished_at``); the workers' "late event runs out of order" warnings are counted
  as a cross-check. (Not ``events.arrival = 'late'``: that only says a higher number arrived
  first, which the cursor absorbs by waiting.) Inversions are reported in total and for the
  worst topic.
- **Late runs** are reported too, and those of *acked* events are a target of their own (0): every
  acked number was delivered, so a late run means the sequencer declared lost an event it had been
  given, and subscribers saw it out of order.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.chaos.stack import ROUTE
from benchmarks.chaos.traffic import Plan, Progress

TopicSeq = tuple[str, int]


@dataclass(frozen=True)
class Target:
    """One PASS/FAIL line."""

    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """A scenario's figures (in print order) and targets."""

    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def target(self, name: str, ok: bool, detail: str) -> None:
        """Record a target."""
        self.targets.append(Target(name, ok, detail))

    @property
    def ok(self) -> bool:
        """Every target met."""
        return all(t.ok for t in self.targets)

    def lines(self) -> list[str]:
        """The report as text."""
        out = [f"== {self.scenario}"]
        width = max((len(k) for k in self.figures), default=0)
        out += [f"  {key:<{width}}  {_fmt(value)}" for key, value in self.figures.items()]
        out += [f"  note: {note}" for note in self.notes]
        out += [f"  {'PASS' if t.ok else 'FAIL'}  {t.name}: {t.detail}" for t in self.targets]
        return out

    def as_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "scenario": self.scenario,
            "ok": self.ok,
            "figures": self.figures,
            "targets": [t.__dict__ for t in self.targets],
            "notes": self.notes,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


class Db:
    """Read-only queries against the stack's Postgres (which may be down for a while)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=0)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        """All rows of a query."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        """The one value of a query."""
        return self.rows(sql, **params)[0][0]

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()


def keys_of(plan: Plan, keys: set[tuple[int, int]]) -> set[TopicSeq]:
    """(topic index, seq) -> (topic name, seq)."""
    return {(plan.topic(t), seq) for t, seq in keys}


def stored_count(db: Db, cache: str) -> int | None:
    """Rows of the cache now (None if Postgres does not answer)."""
    with contextlib.suppress(Exception):
        return int(db.scalar("SELECT count(*) FROM events WHERE cache = :c", c=cache))
    return None


def wait_stored(
    db: Db, cache: str, keys: set[TopicSeq], deadline: float, tick: Callable[[], object] = list
) -> float | None:
    """Monotonic time at which every key was stored, or None at the deadline; ``tick`` runs
    between polls.

    A count(*) first, the full key set only once the count allows it: cheap while far behind.
    """
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            n = db.scalar("SELECT count(*) FROM events WHERE cache = :c", c=cache)
            if n >= len(keys):
                stored = {
                    (r[0], r[1])
                    for r in db.rows(
                        "SELECT topic, topic_sequence_number FROM events WHERE cache = :c", c=cache
                    )
                }
                if keys <= stored:
                    return time.monotonic()
        tick()
        time.sleep(0.25)
    return None


def wait_sent(
    db: Db, cache: str, deadline: float, tick: Callable[[], object] = list
) -> float | None:
    """Monotonic time at which every stored event's outbox row was sent, or None."""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            events = db.scalar("SELECT count(*) FROM events WHERE cache = :c", c=cache)
            sent, other = db.rows(
                "SELECT count(*) FILTER (WHERE status = 'sent'), "
                "count(*) FILTER (WHERE status <> 'sent') "
                "FROM outbox WHERE route = :r AND target_cache = :c",
                r=ROUTE,
                c=cache,
            )[0]
            if events and sent >= events and not other:
                return time.monotonic()
        tick()
        time.sleep(0.25)
    return None


def traffic_figures(report: Report, plan: Plan, progress: Progress) -> set[TopicSeq]:
    """Answers to the deliveries; returns the acked events."""
    answers = progress.answers()
    acked = keys_of(plan, progress.acked(plan.order))
    other_5xx = sum(n for s, n in answers.items() if s >= 500 and s != 503)
    refused_4xx = sum(n for s, n in answers.items() if 400 <= s < 500)
    unanswered = answers.get(0, 0) + answers.get(-1, 0)
    report.figures |= {
        "deliveries sent": plan_sent(progress),
        "distinct events": plan.distinct,
        "acked events": len(acked),
        "answers": {str(k): v for k, v in sorted(answers.items())},
        "503 answers": answers.get(503, 0),
        "transport errors": dict(progress.errors),
    }
    report.target("non-503 5xx answers", other_5xx == 0, str(other_5xx))
    report.target(
        "valid deliveries answered 4xx or not at all",
        refused_4xx + unanswered == 0,
        f"{refused_4xx} 4xx, {unanswered} unanswered",
    )
    return acked


def plan_sent(progress: Progress) -> int:
    """Deliveries that were sent (answered or not)."""
    return progress.total - progress.answers().get(-1, 0)


@dataclass
class Stored:
    """The cache's rows in Postgres after the drain."""

    events: dict[int, tuple[str, int, int, str]]  # id -> (topic, seq, epoch, text)
    outbox: dict[int, str]  # event id -> status of its row on the route
    late_ids: set[int]  # events the route ran late (workflow_runs rows)
    lost_numbers: int  # numbers the sequencer holds as lost (lost_ranges)
    dead_letters: list[str]  # "kind: reason" of those created during the run (any cache)

    @property
    def keys(self) -> Counter[TopicSeq]:
        """Rows per (topic, seq)."""
        return Counter((topic, seq) for topic, seq, _, _ in self.events.values())


def load_stored(db: Db, cache: str, since_wall: float) -> Stored:
    """Everything the checks need, in a few queries."""
    events = {
        r[0]: (r[1], r[2], r[3] or 0, r[4])
        for r in db.rows(
            "SELECT id, topic, topic_sequence_number, epoch, text FROM events WHERE cache = :c",
            c=cache,
        )
    }
    outbox = {
        r[0]: r[1]
        for r in db.rows(
            "SELECT event_id, status::text FROM outbox WHERE route = :r AND target_cache = :c",
            r=ROUTE,
            c=cache,
        )
    }
    late = {
        r[0]
        for r in db.rows(
            "SELECT event_id FROM workflow_runs WHERE route = :r "
            "AND (finished_at IS NULL OR finished_at > started_at)",
            r=ROUTE,
        )
    }
    lost = db.scalar(
        "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM lost_ranges WHERE cache = :c",
        c=cache,
    )
    dead = [
        f"{r[0]}: {r[1]}"[:200]
        for r in db.rows(
            "SELECT kind, reason FROM dead_letters WHERE created_at >= to_timestamp(:t) "
            "ORDER BY id",
            t=since_wall,
        )
    ]
    return Stored(events, outbox, late & set(events), int(lost), dead)


LATE_WARNING = re.compile(rb"late event runs out of order route=(\S+) event=(\d+)")


def late_warnings(home: Path, stored: Stored) -> int:
    """Events of this run that the workers' logs say ran late (the cross-check)."""
    ids = set()
    for log in home.glob("worker*.log"):
        for match in LATE_WARNING.finditer(log.read_bytes()):
            if match.group(1).decode() == ROUTE:
                ids.add(int(match.group(2)))
    return len(ids & set(stored.events))


def storage_figures(report: Report, plan: Plan, acked: set[TopicSeq], stored: Stored) -> None:
    """Lost, duplicated and phantom rows."""
    keys = stored.keys
    sent = keys_of(plan, set(plan.order))
    lost = acked - set(keys)
    duplicated = sum(n - 1 for n in keys.values())
    report.figures |= {
        "stored events": len(keys),
        "event rows": sum(keys.values()),
        "lost (acked, not stored)": len(lost),
        "duplicated rows": duplicated,
        "phantom rows (never sent)": len(set(keys) - sent),
        "numbers held as lost by the sequencer": stored.lost_numbers,
        "dead letters (any cache, during the run)": len(stored.dead_letters),
    }
    report.notes += [f"dead letter {d}" for d in stored.dead_letters[:5]]
    if lost:
        report.notes.append(f"lost, first few: {sorted(lost)[:8]}")
    report.target("lost", not lost, str(len(lost)))
    report.target("duplicated rows", duplicated == 0, str(duplicated))


def outbound_figures(
    report: Report,
    acked: set[TopicSeq],
    stored: Stored,
    log: dict[str, list[tuple[int, str]]],
    duplicates_allowed: int,
    late_warned: int,
) -> None:
    """Outbox, outbound topics and order, per the module docstring's definitions."""
    not_sent = [e for e in stored.events if stored.outbox.get(e) != "sent"]
    seen_total: set[int] = set()
    duplicated = mismatched = 0
    inversions: Counter[str] = Counter()
    late_inversions = 0
    for out_topic, messages in log.items():
        seen: set[int] = set()
        highest: tuple[int, int] | None = None
        for event_id, text in messages:
            if event_id in seen:
                duplicated += 1
                continue
            seen.add(event_id)
            source = stored.events.get(event_id)
            if source is None:
                mismatched += 1
                continue
            topic, seq, epoch, source_text = source
            if text != source_text.upper() or f"{topic}-out" != out_topic:
                mismatched += 1
            place = (epoch, seq)
            if highest is not None and place < highest:
                if event_id in stored.late_ids:
                    late_inversions += 1
                else:
                    inversions[topic] += 1
            highest = max(highest or place, place)
        seen_total |= seen
    missing = set(stored.events) - seen_total
    late_acked = {e for e in stored.late_ids if stored.events[e][:2] in acked}
    worst = inversions.most_common(1)
    report.figures |= {
        "outbox not sent": len(not_sent),
        "outbound messages": sum(len(m) for m in log.values()),
        "outbound missing": len(missing),
        "outbound duplicated": duplicated,
        "outbound wrong text/topic": mismatched,
        "order inversions": sum(inversions.values()),
        "worst topic": f"{worst[0][0]} ({worst[0][1]})" if worst else "-",
        "topics with inversions": len(inversions),
        "late runs (declared lost, ran out of order)": len(stored.late_ids),
        "  the same per the workers' warnings": late_warned,
        "inversions by late runs (excluded)": late_inversions,
    }
    report.target("outbound missing", not missing, str(len(missing)))
    report.target("outbound wrong text/topic", mismatched == 0, str(mismatched))
    report.target(
        "outbound duplicated",
        duplicated <= duplicates_allowed,
        f"{duplicated} (documented bound here: {duplicates_allowed})",
    )
    detail = f"{sum(inversions.values())} in {len(inversions)} topics"
    if worst:
        detail += f", worst {worst[0][0]} with {worst[0][1]}"
    report.target("order inversions", not inversions, detail)
    report.target("acked events run late (out of order)", not late_acked, str(len(late_acked)))


def parse_envelope(value: str | bytes) -> tuple[int, str]:
    """(event id, text) of an outbound message ``{"id": "<event id>:<route>", "text": ...}``."""
    message = json.loads(value)
    return int(str(message["id"]).split(":", 1)[0]), str(message["text"])


def time_target(report: Report, name: str, seconds: float | None, limit_s: float) -> None:
    """A drain-time target: PASS when it happened within ``limit_s``."""
    report.figures[name] = f"{seconds:.1f} s" if seconds is not None else "not within the deadline"
    ok = seconds is not None and seconds <= limit_s
    shown = f"{seconds:.1f} s" if seconds is not None else "never (deadline)"
    report.target(name, ok, f"{shown} (target <= {limit_s:g} s)")
