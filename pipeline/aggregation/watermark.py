"""Id watermarks that stay correct when concurrent transactions commit ids out of order.

A bigserial id is taken when a row is inserted, not when it commits: while transaction A (id 7)
is still open, B (id 8) may commit, and a reader that moved a watermark to 8 would skip 7 for
ever. Time-based lags ("ids older than a few seconds") only shrink the odds.

Instead each scan records the snapshot's in-progress transactions (``pg_snapshot_xip``). A row
below the scanned id that the scan could not see belongs to one of them (its id was drawn after
its transaction took an xid: every writer here writes or locks another row first, and a bare
INSERT's draw-to-xid window is microseconds). When some of them have ended, the next run reads
the id range settled → scanned again (a range scan that only marks windows, which are a set, so
little is recomputed twice; matching rows by ``xmin`` would miss rows written in savepoints).
Once none is running, the settled id moves up to the scanned one; retention deletes only below
it. A transaction held open for long keeps the range unsettled and re-read: set Postgres's
``idle_in_transaction_session_timeout``.

`plan` is pure; `load`, `snapshot` and `save` are the SQL around it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, text

SOURCES: Mapping[str, str] = {
    "events": "events",
    "duplicates": "duplicate_deliveries",
    "lost": "lost_ranges",
}
"""Roll-up source name → table."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One source's progress: everything <= settled is final, <= scanned was read as visible."""

    settled_id: int = 0
    scanned_id: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one statement saw: in-progress xids and the highest visible id per source."""

    running_xids: frozenset[int]
    top_ids: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run reads, and the marks it saves when done.

    ``recheck``: per source, the id range (lo, hi] to read again because transactions running
    at an earlier scan have ended since. ``scan``: per source, the new id range (lo, hi].
    ``remaining``: ids left beyond the ``max_ids`` cap, for the next run.
    """

    recheck: Mapping[str, tuple[int, int]]
    scan: Mapping[str, tuple[int, int]]
    marks: Mapping[str, Mark]
    unsettled_xids: frozenset[int]
    remaining: int = 0


def plan(
    marks: Mapping[str, Mark],
    unsettled: Iterable[int],
    snap: Snapshot,
    max_ids: int | None = None,
) -> Plan:
    """Decide what to re-read and scan, given the saved marks and a fresh snapshot.

    ``max_ids`` caps each source's new range, so one run's work is bounded; the rest is left
    for the next run (rows of transactions running now may sit below the cap: they are waited
    for like any other).
    """
    unsettled = frozenset(unsettled)
    still_running = unsettled & snap.running_xids
    ended = unsettled - still_running
    recheck: dict[str, tuple[int, int]] = {}
    if ended:
        recheck = {
            source: (mark.settled_id, mark.scanned_id)
            for source, mark in marks.items()
            if mark.scanned_id > mark.settled_id
        }
    scan: dict[str, tuple[int, int]] = {}
    saved: dict[str, Mark] = {}
    remaining = 0
    for source in SOURCES:
        mark = marks.get(source, Mark())
        visible = max(snap.top_ids.get(source, 0), mark.scanned_id)
        top = visible if max_ids is None else min(visible, mark.scanned_id + max_ids)
        remaining += visible - top
        if top > mark.scanned_id:
            scan[source] = (mark.scanned_id, top)
        if still_running:
            settled = mark.settled_id
        elif snap.running_xids:
            settled = mark.scanned_id
        else:  # nothing was running at the snapshot: every id up to top is visible to this run
            settled = top
        saved[source] = Mark(settled_id=settled, scanned_id=top)
    return Plan(
        recheck=recheck,
        scan=scan,
        marks=saved,
        unsettled_xids=still_running | snap.running_xids,
        remaining=remaining,
    )


def load(conn: Connection, window_s: int) -> tuple[dict[str, Mark], frozenset[int]]:
    """The saved marks of ``window_s`` and the xids still to wait for."""
    rows = conn.execute(
        text(
            "SELECT source, settled_id, scanned_id, unsettled_xids FROM rollup_watermarks"
            " WHERE window_s = :window_s"
        ),
        {"window_s": window_s},
    ).all()
    marks = {row.source: Mark(row.settled_id, row.scanned_id) for row in rows}
    unsettled = frozenset(xid for row in rows for xid in row.unsettled_xids)
    return marks, unsettled


def snapshot(conn: Connection) -> Snapshot:
    """Running xids and top ids, read in one statement (so from one snapshot)."""
    tops = ", ".join(
        f"(SELECT coalesce(max(id), 0) FROM {table}) AS {source}"
        for source, table in SOURCES.items()
    )
    row = conn.execute(
        text(
            "SELECT ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())::text::bigint) AS xip, "
            + tops
        )
    ).one()
    return Snapshot(
        running_xids=frozenset(row.xip),
        top_ids={source: int(getattr(row, source)) for source in SOURCES},
    )


def save(conn: Connection, window_s: int, done: Plan) -> None:
    """Store the marks of a finished run."""
    conn.execute(
        text(
            "INSERT INTO rollup_watermarks AS w"
            " (window_s, source, settled_id, scanned_id, unsettled_xids, updated_at)"
            " VALUES (:window_s, :source, :settled, :scanned, :xids, now())"
            " ON CONFLICT (window_s, source) DO UPDATE SET settled_id = excluded.settled_id,"
            " scanned_id = excluded.scanned_id, unsettled_xids = excluded.unsettled_xids,"
            " updated_at = excluded.updated_at"
        ),
        [
            {
                "window_s": window_s,
                "source": source,
                "settled": mark.settled_id,
                "scanned": mark.scanned_id,
                "xids": sorted(done.unsettled_xids),
            }
            for source, mark in done.marks.items()
        ],
    )
