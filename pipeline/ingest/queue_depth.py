"""Broker queue depth for Prometheus, read from the broker on each scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from kombu import Connection
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.celery_app import QUEUES
from pipeline.config import Settings
from pipeline.stores import broker_url, is_redis, redis_url

logger = logging.getLogger(__name__)


_PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis: queue name + separator + priority step
_PRIORITY_STEPS = (0, 3, 6, 9)


def _redis_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]


class QueueDepthCollector(Collector):
    """``pipeline_queue_depth_messages{queue}``: messages waiting in each Celery queue.

    Messages reserved by workers (unacked) are not counted: they are being worked on. A scrape
    that cannot reach the broker reports ``pipeline_queue_depth_up 0`` instead of failing.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = broker_url(settings)

    def depths(self) -> dict[str, int]:
        """Waiting messages per queue."""
        if is_redis(self.url):
            client = redis.Redis.from_url(
                redis_url(self.url), socket_timeout=1, socket_connect_timeout=1
            )
            try:
                # A Celery queue on Redis is a list named after it, plus one list per priority step.
                pipe = client.pipeline(transaction=False)
                for queue in QUEUES:
                    for key in _redis_keys(queue):
                        pipe.llen(key)
                lengths = iter(pipe.execute())
                return {q: sum(next(lengths) for _ in _redis_keys(q)) for q in QUEUES}
            finally:
                client.close()
        counts = {}
        with Connection(self.url, connect_timeout=1) as conn:
            for queue in QUEUES:
                try:
                    _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
                except conn.channel_errors:
                    count = 0  # not declared yet: nothing waiting
                counts[queue] = int(count)
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "pipeline_queue_depth_messages", "Messages waiting in a Celery queue.", labels=["queue"]
        )
        # celery-exporter's name for the same figure, so its dashboards and alerts work as-is.
        length = GaugeMetricFamily(
            "celery_queue_length", "Messages waiting in a Celery queue.", labels=["queue_name"]
        )
        up = GaugeMetricFamily("pipeline_queue_depth_up", "1 if the broker answered the scrape.")
        try:
            for queue, count in self.depths().items():
                depth.add_metric([queue], float(count))
                length.add_metric([queue], float(count))
            up.add_metric([], 1.0)
        except Exception as exc:  # a scrape must answer even when the broker is down
            logger.warning("queue depth scrape failed error=%r", exc)
            up.add_metric([], 0.0)
        yield depth
        yield length
        yield up
