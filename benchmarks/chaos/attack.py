"""The hostile scenario: requests that try to break the receiver or slip past its checks, beside
valid traffic that must not suffer.

``requests`` hostile requests: 30% from schemathesis against the served OpenAPI document
(fuzz.py), the rest from hostile.py's generators, a third of those forgeries (forgeries.py).
Valid deliveries, a tenth as many, go on alongside at 100/s on cache ``hostile-ok`` (no route)
and must all be stored, as must every hostile request that was accepted (2xx).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter

from benchmarks.chaos import checks
from benchmarks.chaos.checks import Db, Report
from benchmarks.chaos.forgeries import forgery_generators
from benchmarks.chaos.hostile import Maker, hostile_generators, send_raw
from benchmarks.chaos.scenarios import Options, join_traffic, process_exits, start_traffic
from benchmarks.chaos.stack import Stack
from benchmarks.ingest_bench import http_ok

VALID_RATE = 100.0  # valid deliveries per second beside the hostile ones


def run_hostile(stack: Stack, opts: Options) -> Report:
    """``requests`` hostile requests beside valid ones; see the module docstring."""
    from benchmarks.chaos.fuzz import run_schemathesis

    report = Report("hostile")
    since_wall = time.time()
    n_valid = max(10, opts.requests // 10)
    n_fuzz = opts.requests * 3 // 10  # schemathesis; the generators of hostile.py make the rest
    valid_opts = Options(events=n_valid, topics=10, seed=opts.seed, duplicates=0.0)
    plan, progress, thread, stop = start_traffic(stack, valid_opts, "hostile-ok", VALID_RATE)
    try:
        maker = Maker(stack.secret, opts.seed)
        hostile, forged = hostile_generators(maker), forgery_generators(maker)
        rng = random.Random(opts.seed)
        fuzz = run_schemathesis(stack.receiver_port, stack.secret, n_fuzz, opts.seed)
        n_raw = max(0, opts.requests - len(fuzz.statuses))
        raw = [rng.choice(forged if rng.random() < 1 / 3 else hostile)() for _ in range(n_raw)]
        statuses = send_raw(stack.receiver_port, raw)
        join_traffic(thread, stop, progress, n_valid / VALID_RATE + 600)
    except BaseException:
        stop.set()
        raise
    healthy = http_ok(stack.receiver_port, "/healthz")
    accepted = [
        r.body for r, s in zip(raw, statuses, strict=True) if 200 <= s < 300 and not r.forged
    ]
    accepted += fuzz.accepted_bodies
    by_kind: dict[str, Counter[int]] = {}
    for request, status in zip(raw, statuses, strict=True):
        by_kind.setdefault(request.kind.split(" (")[0], Counter())[status] += 1
    for kind, status in fuzz.statuses:
        by_kind.setdefault(kind, Counter())[status] += 1
    server_errors = [(k, s) for k, c in by_kind.items() for s in c if s >= 500 and s != 503]
    other_5xx = sum(by_kind[k][s] for k, s in server_errors)
    forgeries = [s for r, s in zip(raw, statuses, strict=True) if r.forged] + fuzz.forged
    forged_ok = sum(1 for s in forgeries if 200 <= s < 300)

    db = Db(stack.postgres.url)
    deadline = time.monotonic() + opts.drain_timeout_s
    acked_keys = checks.keys_of(plan, progress.acked(plan.order))
    checks.wait_stored(db, plan.cache, acked_keys, deadline, stack.restart_exited)
    wanted = _keys_of_bodies(accepted)
    not_stored = _wait_bodies_stored(db, wanted, deadline)
    acked = checks.traffic_figures(report, plan, progress)
    stored = checks.load_stored(db, plan.cache, since_wall)
    checks.storage_figures(report, plan, acked, stored)
    db.close()

    report.figures |= {
        "hostile requests": len(raw) + len(fuzz.statuses),
        "  own generators (signed)": sum(1 for r in raw if not r.forged),
        "  forgeries": len(forgeries),
        "  schemathesis": len(fuzz.statuses),
        "  schemathesis unsendable (skipped)": fuzz.unsendable,
        "hostile accepted (2xx), distinct events": len(wanted),
        "accepted but not stored": len(not_stored),
        "schemathesis check failures": dict(fuzz.check_failures),
    }
    for kind, counts in sorted(by_kind.items()):
        report.figures[f"  answers: {kind}"] = {str(k): v for k, v in sorted(counts.items())}
    report.notes += fuzz.examples
    if server_errors:
        report.notes.append(f"5xx from: {sorted({k for k, _ in server_errors})}")
    if not_stored:
        report.notes.append(f"accepted, not stored (first few): {sorted(not_stored)[:5]}")
    report.target("non-503 5xx answers (hostile)", other_5xx == 0, str(other_5xx))
    report.target("forgeries accepted", forged_ok == 0, f"{forged_ok} of {len(forgeries)}")
    report.target("accepted hostile requests not stored", not not_stored, str(len(not_stored)))
    report.target("receiver healthy afterwards", healthy, "GET /healthz 200" if healthy else "no")
    process_exits(report, stack)
    return report


def _keys_of_bodies(bodies: list[bytes]) -> set[tuple[str, str, int]]:
    """(cache, topic, sequence number) of accepted webhook bodies.

    By number, not by idempotency key: the sequencer takes a second body with a number already
    received (whatever its event time) for a duplicate delivery of the same message and records
    it in duplicate_deliveries instead of storing it, as Momento numbers each message once.
    """
    keys = set()
    for body in bodies:
        with contextlib.suppress(ValueError, KeyError, TypeError, UnicodeDecodeError):
            data = json.loads(body)
            keys.add((data["cache"], data["topic"], int(data["topic_sequence_number"])))
    return keys


def _wait_bodies_stored(
    db: Db, wanted: set[tuple[str, str, int]], deadline: float
) -> set[tuple[str, str, int]]:
    """Those of ``wanted`` without a row by the deadline."""
    missing = set(wanted)
    while missing and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            rows = db.rows(
                "SELECT cache, topic, topic_sequence_number FROM events "
                "WHERE (cache, topic, topic_sequence_number) IN "
                "(SELECT * FROM unnest(CAST(:c AS text[]), CAST(:t AS text[]), "
                "CAST(:s AS bigint[])))",
                c=[m[0] for m in missing],
                t=[m[1] for m in missing],
                s=[m[2] for m in missing],
            )
            missing -= {(r[0], r[1], r[2]) for r in rows}
        if missing:
            time.sleep(0.5)
    return missing
