"""The traffic scenarios, and what every scenario shares. Each runs against a running
``Stack`` on a cache of its own (``chaos-<name>``) and returns a ``Report``; see checks.py for
what every count means.

- ``kill``: unpaced traffic (or ``--rate``) while a random worker's process group is SIGKILLed
  and restarted, ``kills`` times, spread over the traffic by progress; drained = every acked event
  stored and its outbox row sent, timed from the last answer.
- ``postgres`` / ``broker``: traffic at ``rate``; the server is crashed mid-run (``pg_ctl stop -m
  immediate`` / ``kill -9``) for ``outage_s`` and restarted on the same data and port. Times are
  taken from its return: when every event acked before it returned was stored, and when the
  outbox was drained (after the traffic ended).

The hostile scenario is in attack.py.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.chaos import checks
from benchmarks.chaos.checks import Db, Report
from benchmarks.chaos.outbound import create_cache, read_topics
from benchmarks.chaos.stack import ROUTE, Stack
from benchmarks.chaos.traffic import Plan, Progress, Requests, make_plan, start_sending

PACED_CONNECTIONS = 1024  # Momento opens as many as it needs; this bounds ours


@dataclass
class Options:
    """Sizes and targets of a run (the CLI's flags)."""

    events: int = 50_000
    topics: int = 50
    kills: int = 10
    outage_s: float | None = None  # postgres 30, broker 20
    rate: float | None = None  # kill: unpaced; postgres, broker: 1,000/s
    seed: int = 7
    requests: int = 10_000  # hostile
    connections: int = 32  # unpaced traffic
    duplicates: float = 0.05
    reorder_window: int = 200
    drain_timeout_s: float = 300.0
    kill_drain_limit_s: float = 120.0
    stored_after_return_limit_s: float = 20.0
    drained_after_return_limit_s: float = 120.0


def wait_for(condition: Callable[[], bool], timeout_s: float, stack: Stack | None = None) -> bool:
    """Poll ``condition`` every 50 ms for at most ``timeout_s``; check the stack's processes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if stack is not None:
            stack.restart_exited()
        time.sleep(0.05)
    return condition()


def start_traffic(
    stack: Stack, opts: Options, cache: str, rate: float | None
) -> tuple[Plan, Progress, threading.Thread, threading.Event]:
    create_cache(stack.momento_local, cache)
    plan = make_plan(
        cache, opts.events, opts.topics, opts.seed, opts.duplicates, opts.reorder_window
    )
    connections = PACED_CONNECTIONS if rate else opts.connections
    progress, thread, stop = start_sending(
        stack.receiver_port,
        Requests(plan, stack.secret),
        len(plan.order),
        rate=rate,
        connections=connections,
    )
    wait_for(lambda: progress.started_at is not None, 10)
    return plan, progress, thread, stop


def join_traffic(
    thread: threading.Thread, stop: threading.Event, progress: Progress, budget_s: float
) -> None:
    thread.join(budget_s)
    if thread.is_alive():
        stop.set()
        thread.join(60)
    if progress.finished_at is None:
        progress.finished_at = time.monotonic()


def _finish(
    report: Report,
    stack: Stack,
    plan: Plan,
    progress: Progress,
    since_wall: float,
    duplicates_allowed: int,
) -> None:
    """Answers, storage and outbound figures, once the drain is over."""
    acked = checks.traffic_figures(report, plan, progress)
    db = Db(stack.postgres.url)
    try:
        stored = checks.load_stored(db, plan.cache, since_wall)
        checks.storage_figures(report, plan, acked, stored)
        expected = {f"{plan.topic(t)}-out": 0 for t in range(plan.topics)}
        for topic, n in db.rows(
            "SELECT target_topic, count(*) FROM outbox WHERE route = :r AND target_cache = :c "
            "AND status = 'sent' GROUP BY target_topic",
            r=ROUTE,
            c=plan.cache,
        ):
            expected[topic] = n
    finally:
        db.close()
    log, problems = read_topics(stack.momento_local, plan.cache, expected)
    report.notes += problems[:5]
    warned = checks.late_warnings(stack.home, stored)
    checks.outbound_figures(report, acked, stored, log, duplicates_allowed, warned)
    process_exits(report, stack)


def process_exits(report: Report, stack: Stack) -> None:
    """Pipeline processes that exited by themselves (restarted by the harness): a target."""
    stack.restart_exited()
    report.notes += stack.exits[:5]
    names = ", ".join(e.split(" ", 1)[0] for e in stack.exits)
    report.target(
        "pipeline processes that exited on their own",
        not stack.exits,
        f"{len(stack.exits)}" + (f" ({names}; restarted)" if names else ""),
    )
    stack.exits.clear()


def run_kill(stack: Stack, opts: Options) -> Report:
    """SIGKILL a worker's process group ``kills`` times during the traffic, restarting it."""
    report = Report("kill")
    since_wall = time.time()
    plan, progress, thread, stop = start_traffic(stack, opts, "chaos-kill", opts.rate)
    rng = random.Random(opts.seed)
    kills: list[str] = []
    last_kill = 0.0
    try:
        for k in range(opts.kills):
            threshold = (k + 1) * len(plan.order) // (opts.kills + 1)
            wait_for(
                lambda t=threshold: progress.answered >= t or not thread.is_alive(), 3600, stack
            )
            victim = rng.choice(stack.worker_names)
            with contextlib.suppress(TimeoutError):  # one that is still starting is killed too
                stack.wait_workers(60, [victim])
            time.sleep(max(0.0, last_kill + 2.0 - time.monotonic()))
            stack.kill_worker(victim)
            stack.start_worker(victim)
            last_kill = time.monotonic()
            assert progress.started_at is not None
            kills.append(f"{victim}@{last_kill - progress.started_at:.1f}s")
        join_traffic(thread, stop, progress, 3600)
    except BaseException:
        stop.set()
        raise
    assert progress.started_at is not None
    assert progress.finished_at is not None
    deadline = time.monotonic() + opts.drain_timeout_s
    acked_keys = checks.keys_of(plan, progress.acked(plan.order))
    db = Db(stack.postgres.url)
    stored_then = checks.stored_count(db, plan.cache)
    try:
        stored_at = checks.wait_stored(db, plan.cache, acked_keys, deadline, stack.restart_exited)
        sent_at = (
            checks.wait_sent(db, plan.cache, deadline, stack.restart_exited) if stored_at else None
        )
    finally:
        db.close()
    end = progress.finished_at
    report.figures |= {
        "worker kills": len(kills),
        "kills (worker@time)": " ".join(kills),
        "traffic s": end - progress.started_at,
        "acked/s": len(acked_keys) / max(1e-9, end - progress.started_at),
        "stored when the traffic ended": stored_then,
        "all acked stored after the last answer": _secs(stored_at, end),
    }
    checks.time_target(
        report,
        "drained (outbox sent) after the last answer",
        None if sent_at is None else sent_at - end,
        opts.kill_drain_limit_s,
    )
    allowed = 2 * stack.options.concurrency * len(kills)
    _finish(report, stack, plan, progress, since_wall, allowed)
    return report


def run_outage(stack: Stack, opts: Options, server: str) -> Report:
    """Crash ``server`` ("postgres" or "broker") mid-run for ``outage_s``, then restart it."""
    report = Report(server)
    outage_s = (
        opts.outage_s if opts.outage_s is not None else (30.0 if server == "postgres" else 20.0)
    )
    rate = opts.rate or 1000.0
    since_wall = time.time()
    plan, progress, thread, stop = start_traffic(stack, opts, f"chaos-{server}", rate)
    target = stack.postgres if server == "postgres" else stack.broker
    try:
        assert progress.started_at is not None
        duration = len(plan.order) / rate
        crash_at = progress.started_at + max(1.0, (duration - outage_s) / 2)
        wait_for(lambda: time.monotonic() >= crash_at, duration + 60, stack)
        down_at = time.monotonic()  # before the signal: anything later is after the crash
        target.crash()
        wait_for(lambda: time.monotonic() >= down_at + outage_s, outage_s + 5, stack)
        restart_at = time.monotonic()  # it may answer from here on
        target.start()
        up_at = time.monotonic()  # it answers
        backlog = checks.keys_of(plan, progress.acked(plan.order, before=up_at))
        db = Db(stack.postgres.url)
        deadline = up_at + opts.drain_timeout_s
        at_end: list[int | None] = []  # rows when the traffic ended (it may end while we wait)

        def tick() -> None:
            stack.restart_exited()
            if not at_end and not thread.is_alive():
                at_end.append(checks.stored_count(db, plan.cache))

        backlog_at = checks.wait_stored(db, plan.cache, backlog, deadline, tick)
        join_traffic(thread, stop, progress, duration * 3 + 600)
        tick()
        stored_then = at_end[0]
        acked_keys = checks.keys_of(plan, progress.acked(plan.order))
        stored_at = checks.wait_stored(db, plan.cache, acked_keys, deadline, stack.restart_exited)
        sent_at = (
            checks.wait_sent(db, plan.cache, deadline, stack.restart_exited) if stored_at else None
        )
        db.close()
    except BaseException:
        stop.set()
        raise
    assert progress.finished_at is not None
    acked_down = [  # answered 2xx after the crash, before the restart began
        i
        for i, s in enumerate(progress.statuses)
        if 200 <= s < 300 and down_at < progress.answered_at[i] < restart_at
    ]
    sent_down = [i for i in acked_down if progress.sent_at[i] > down_at]
    if sent_down and server == "broker":
        report.notes.append(
            "2xx to requests sent after the crash (ms after it: sent, answered): "
            + ", ".join(
                f"{plan.order[i]} {1000 * (progress.sent_at[i] - down_at):.1f}/"
                f"{1000 * (progress.answered_at[i] - down_at):.1f}"
                for i in sent_down[:8]
            )
        )
    refused_after = sum(
        1 for i, s in enumerate(progress.statuses) if s == 503 and progress.sent_at[i] > up_at
    )
    what = "Postgres" if server == "postgres" else "the broker"
    report.figures |= {
        "outage s (crash to answering again)": up_at - down_at,
        "outage began s into the traffic": down_at - progress.started_at,
        "rate offered /s": rate,
        "rate achieved /s": progress.answered
        / max(1e-9, progress.finished_at - progress.started_at),
        f"2xx answered while {what} was down": len(acked_down),
        "  of requests sent before the crash (in flight at it)": len(acked_down) - len(sent_down),
        "  of requests sent after the crash": len(sent_down),
        f"503 to requests sent after {what} returned": refused_after,
        f"events acked before {what} returned": len(backlog),
        "stored when the traffic ended": stored_then,
        f"all acked stored after {what} returned": _secs(stored_at, up_at),
        f"outbox drained after {what} returned": _secs(sent_at, up_at),
    }
    backlog_s = None if backlog_at is None else backlog_at - up_at
    drained_s = None if sent_at is None else sent_at - up_at
    if server == "postgres":
        checks.time_target(
            report,
            "every event acked before Postgres returned stored, after it returned",
            backlog_s,
            opts.stored_after_return_limit_s,
        )
        checks.time_target(
            report,
            "outbox drained, after Postgres returned",
            drained_s,
            opts.drained_after_return_limit_s,
        )
    else:
        report.figures[f"every event acked before {what} returned stored, after it returned"] = (
            _secs(backlog_at, up_at)
        )
        report.target(
            "outbox drained", sent_at is not None, _secs(sent_at, up_at) + " after return"
        )
        report.target(
            "2xx to requests sent while the broker was down", not sent_down, str(len(sent_down))
        )
    allowed = 2 * stack.options.workers * stack.options.concurrency
    _finish(report, stack, plan, progress, since_wall, allowed)
    return report


def _secs(at: float | None, since: float) -> str:
    return "not within the deadline" if at is None else f"{at - since:.1f} s"
