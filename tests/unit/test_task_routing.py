"""Which queue a task lands on: the pipeline's own by name, anything else on `workflows`."""

from __future__ import annotations

import pytest
from celery import Celery

from pipeline.celery_app import configure
from pipeline.config import Settings


@pytest.fixture
def app() -> Celery:
    celery = Celery("routing-test")
    configure(celery, Settings(celery_broker_url="redis://127.0.0.1:1/0"))
    return celery


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        ("tasks.ingest.store_webhooks", "ingest"),
        ("tasks.publish.drain", "publish"),
        ("tasks.aggregate.rollup", "aggregate"),
        ("tasks.examples.uppercase", "workflows"),
        ("acme.pipelines.enrich", "workflows"),  # a user's canvas step without queue=
        ("celery.chord_unlock", "workflows"),
    ],
)
def test_tasks_route_to_their_stage_queue(app: Celery, task: str, queue: str) -> None:
    assert app.amqp.router.route({}, task)["queue"].name == queue
