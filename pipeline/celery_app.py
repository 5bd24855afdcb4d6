"""The Celery app: queues, routing, at-least-once delivery settings and the beat schedule.

Import it as ``pipeline.celery_app:app`` (``celery -A pipeline.celery_app worker``). Configuration
is read lazily from Settings the first time Celery needs it, so tests and the CLI can set the
environment (or call ``configure``) before anything connects.
"""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

from pipeline.config import Settings, get_settings
from pipeline.stores import broker_url, is_redis

QUEUES = ("ingest", "sequence", "workflows", "publish", "aggregate")
TASK_MODULES = (
    "tasks.ingest",
    "tasks.changes",
    "tasks.sequence",
    "tasks.workflows",
    "tasks.publish",
    "tasks.aggregate",
)
KEEP_HELD_STEP = "pipeline.ingest.held_deliveries:KeepHeld"
"""The consumer bootstep that keeps what a live worker holds from being redelivered."""

# Worst case a task waits before its broker message is acked: the hard time limit of one run.
TASK_TIME_LIMIT_S = 300
# Longest retry backoff; a retried task is re-sent with a countdown, held unacked until due.
RETRY_BACKOFF_MAX_S = 300


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Periodic jobs; run exactly one `pipeline beat` per deployment."""
    tick_s = max(0.5, settings.pipeline_reorder_window_s / 2)
    drain_s = settings.pipeline_outbox_drain_s
    return {
        "sequence-tick": {"task": "tasks.sequence.tick", "schedule": tick_s},
        # Safety nets: workflows send their outbox rows right after commit, and ingest hands
        # events over right after its commit; these catch what a crash in between left behind.
        "outbox-drain": {"task": "tasks.publish.drain", "schedule": drain_s},
        "workflows-sweep": {"task": "tasks.workflows.sweep", "schedule": max(1.0, 2 * drain_s)},
        "aggregate-rollup": {
            "task": "tasks.aggregate.rollup",
            "schedule": float(settings.pipeline_rollup_window_s),
            "options": {"expires": float(settings.pipeline_rollup_window_s)},
        },
        "aggregate-retention": {"task": "tasks.aggregate.retention", "schedule": 3600.0},
    }


def build_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for this deployment."""
    url = broker_url(settings)
    exchange = Exchange("pipeline", type="direct")
    return {
        "broker_url": url,
        # Chords (fan-in workflows) need a result backend; Redis serves when it is the broker.
        "result_backend": url if is_redis(url) else "rpc://",
        "result_expires": 3600,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # At least once: ack after the task ran, requeue if the worker process dies mid-task,
        # and reserve one message at a time so a crash strands as little as possible.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT_S,
        "task_soft_time_limit": TASK_TIME_LIMIT_S - 30,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # Tasks no route names (users' canvas steps, Celery's own) are workflow work.
        "task_default_queue": "workflows",
        "task_queues": [Queue(name, exchange, routing_key=name) for name in QUEUES],
        "task_default_exchange": "pipeline",
        "task_default_routing_key": "workflows",
        "task_routes": {f"tasks.{name}.*": {"queue": name} for name in QUEUES}
        | {"tasks.ingest.*": {"queue": "ingest"}, "tasks.changes.*": {"queue": "ingest"}}
        | {"tasks.examples.*": {"queue": "workflows"}},
        # Redis redelivers a message nobody acked within the visibility timeout. Live workers
        # re-stamp what they hold every second (ingest.held_deliveries), so the timeout is how
        # long a holder has been gone, not how long a task or a retry countdown may take.
        "broker_transport_options": {
            "visibility_timeout": settings.pipeline_visibility_timeout_s,
            "queue_order_strategy": "priority",
            # kombu scans for such messages every 10 s but by default acts on every 10th scan
            # only, so a killed worker's batches would wait up to ~100 s past the timeout.
            "unacked_restore_throttle": 1,
            "unacked_restore_interval": 5,
            # The scan's mutex outlives a worker killed while scanning: by 5 minutes by default,
            # and no message comes back meanwhile.
            "unacked_mutex_expire": 15,
            # A broker host that drops packets must fail a connect, not hang it for the OS's
            # TCP timeout (minutes): Celery then retries, and the CLI's probe said so at start.
            "socket_connect_timeout": 5,
        },
        "result_backend_transport_options": {"visibility_timeout": 900},
        "beat_schedule": beat_schedule(settings),
        # Errbacks of a chord also apply to its header tasks: Celery's announced future default,
        # opted into now (it also silences the deprecation warning on every chord).
        "task_allow_error_cb_on_chord_header": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def create_app() -> Celery:
    """The Celery app, configured lazily from Settings."""
    celery = Celery("pipeline", include=list(TASK_MODULES))
    celery.add_defaults(lambda: build_config(get_settings()))
    # Named, not imported, like the task modules: the app is the shared floor and imports no
    # stage; the worker loads the step when it builds its consumer.
    celery.steps["consumer"].add(KEEP_HELD_STEP)
    return celery


def configure(celery: Celery, settings: Settings) -> None:
    """Apply ``settings`` to an app explicitly (tests, and processes that set URLs late)."""
    celery.conf.update(build_config(settings))


@worker_process_init.connect
def _fresh_engines_after_fork(**_: Any) -> None:
    # Pooled connections must not cross a fork: each prefork child opens its own.
    from pipeline.db import dispose_engines

    dispose_engines()
    # What the child inherited stays for its life: keep it out of the collector's full scans
    # (they paused a busy child for tens of ms, as in the receiver before its gc.freeze()).
    gc.freeze()


app = create_app()
