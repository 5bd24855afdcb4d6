"""The dashboard in a real browser (Debian's chromium driven by Playwright) over a real pipeline.

One module-wide run: the local Momento server and the receiver in threads, a `pipeline worker`
and `pipeline beat` in subprocesses, events published with the official SDK (one of them dropped
by the local server's fault injection, one failing its workflow until "the fix"), and the
dashboard app under uvicorn. Each page is screenshotted to PIPELINE_SCREENSHOTS, or to a
directory under the pytest temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.outbound import momento_client as mc
from tests.conftest import TEST_SECRET, ReceiverServer, WorkerProcess, wait_for
from tests.e2e.workflow_support import WEBHOOK_PATH, beat, client_settings

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "admin", "dashboard-test-password"
CACHE, TOPIC = "shop", "orders"
ROUTES = f"""
[[routes]]
name = "shout"
cache = "{CACHE}"
topic = "{TOPIC}"
workflow = "tests.e2e.flaky_workflows:shout_until_fixed"
ordered = true
publish = {{ cache = "{CACHE}", topic = "orders-out" }}
"""


@dataclass
class Run:
    """Where the module's pipeline and dashboard are."""

    settings: Settings
    dashboard_url: str
    receiver_url: str
    broken_file: Path
    env: dict[str, str]
    shots: Path
    dropped: int


def _count(settings: Settings, sql: str) -> int:
    from pipeline.db import get_engine

    with get_engine(settings).connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _truncate(settings: Settings) -> None:
    from pipeline.db import get_engine
    from pipeline.models import Base

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(settings).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def _publish(emu: EmulatorServer, texts: list[str]) -> None:
    client = mc.topic_client(client_settings(emu), timeout=mc.PUBLISH_TIMEOUT)
    try:
        for message in texts:
            mc.publish(client, CACHE, TOPIC, message)
    finally:
        client.close()


@pytest.fixture(scope="module")
def run(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from pipeline.dashboard.app import create_app as create_dashboard
    from pipeline.ingest.receiver import create_app as create_receiver

    _truncate(settings)
    home = tmp_path_factory.mktemp("dashboard")
    shots = Path(os.environ.get("PIPELINE_SCREENSHOTS") or home / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    routes, broken = home / "routes.toml", home / "broken"
    routes.write_text(ROUTES)
    broken.touch()
    emu = EmulatorServer(port=0, admin_port=None, idle_reset_s=0, seed=11).start()
    receiver = ReceiverServer(create_receiver(settings)).start()
    env = {
        "MOMENTO_LOCAL": emu.address,
        "PIPELINE_ROUTES": str(routes),
        "PIPELINE_WORKFLOW_MAX_ATTEMPTS": "2",
        "FLAKY_BROKEN_FILE": str(broken),
    }
    worker = WorkerProcess("dash1", "-c", "2", env=env).start(settings)
    dashboard = None
    try:
        with beat(env):
            emu.create_cache(CACHE)
            emu.register_webhook(CACHE, TOPIC, receiver.url + WEBHOOK_PATH, TEST_SECRET)
            stats = lambda: emu.webhook_stats(CACHE, TOPIC)  # noqa: E731
            _publish(emu, [f"order {i}" for i in range(1, 5)])
            # Deliveries are decided asynchronously: the fault covers exactly one of them.
            assert wait_for(lambda: stats().attempted == 4, 30)
            emu.set_faults(CACHE, TOPIC, drop=1.0)
            _publish(emu, ["order 5 (dropped on the way)"])
            assert wait_for(lambda: stats().dropped == 1, 30)
            emu.clear_faults()
            _publish(emu, ["order 6", "boom", *[f"order {i}" for i in range(8, 13)]])
            assert wait_for(lambda: _count(settings, "SELECT count(*) FROM events") == 11, 30)
            assert wait_for(lambda: _count(settings, "SELECT count(*) FROM lost_ranges") == 1, 30)
            dead = "SELECT count(*) FROM dead_letters WHERE kind = 'workflow'"
            assert wait_for(lambda: _count(settings, dead) == 1, 60)
            sent = "SELECT count(*) FROM outbox WHERE status = 'sent'"
            assert wait_for(lambda: _count(settings, sent) == 10, 30)
            forged = httpx.post(
                receiver.url + WEBHOOK_PATH,
                content=b"{}",
                headers={"content-type": "application/json", "momento-signature": "forged"},
            )
            assert forged.status_code == 401
            routed = settings.model_copy(update={"pipeline_routes": routes})
            dashboard = ReceiverServer(
                create_dashboard(routed, user=USER, password=PASSWORD, receiver_url=receiver.url)
            ).start()
            yield Run(
                settings=settings,
                dashboard_url=dashboard.url,
                receiver_url=receiver.url,
                broken_file=broken,
                env=dict(os.environ) | env,
                shots=shots,
                dropped=emu.webhook_stats(CACHE, TOPIC).dropped,
            )
    finally:
        if dashboard is not None:
            dashboard.stop()
        worker.stop()
        receiver.stop()
        emu.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def page(run: Run, browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1600, "height": 1000},
        base_url=run.dashboard_url,
    )
    opened = context.new_page()
    yield opened
    context.close()


def shoot(page: Page, run: Run, name: str) -> Path:
    """A full-page screenshot named after the page."""
    path = run.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def receiver_rejections(run: Run) -> dict[str, str]:
    """Rejected webhooks by code, read from the receiver's /metrics."""
    counts: dict[str, int] = {}
    body = httpx.get(run.receiver_url + "/metrics").text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            rejected = sample.labels.get("outcome") not in (None, "accepted")
            if sample.name == "pipeline_webhook_requests_total" and rejected and sample.value:
                reason = sample.labels["reason"]
                counts[reason] = counts.get(reason, 0) + int(sample.value)
    return {reason: str(n) for reason, n in counts.items()}


def stats_json(run: Run) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "stats", "--json", "--cache", CACHE],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    topics = json.loads(result.stdout)["topics"]
    return next(t for t in topics if t["topic"] == TOPIC)


def test_without_credentials_the_dashboard_answers_401_and_a_forged_post_403(run: Run) -> None:
    for path in ("/", "/events", "/dead-letters", "/static/htmx.min.js"):
        response = httpx.get(run.dashboard_url + path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic ")
    wrong = httpx.get(run.dashboard_url + "/", auth=(USER, "not-the-password"))
    assert wrong.status_code == 401
    forged = httpx.post(
        run.dashboard_url + "/dead-letters/replay",
        data={"all": "1", "confirm": "1", "csrf": "guessed"},
        auth=(USER, PASSWORD),
    )
    assert forged.status_code == 403
    assert _count(run.settings, "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL") == 1


def test_overview_numbers_equal_pipeline_stats_json(run: Run, page: Page) -> None:
    expected = stats_json(run)
    page.goto("/")
    row = page.locator(f'tr[data-cache="{CACHE}"][data-topic="{TOPIC}"]')
    expect(row).to_be_visible()
    shown = {
        field: row.locator(f'td[data-field="{field}"]').inner_text()
        for field in ("events", "lost", "resets", "duplicates", "out_of_order", "p50", "p99")
    }
    latency = expected["receive_latency"]
    assert shown == {
        "events": str(expected["events"]),
        "lost": str(expected["lost"]),
        "resets": str(expected["resets"]),
        "duplicates": str(expected["duplicates"]),
        "out_of_order": str(expected["out_of_order"]),
        "p50": f"{latency['p50_ms']:.1f}",
        "p99": f"{latency['p99_ms']:.1f}",
    }
    assert expected["lost"] == run.dropped == 1
    assert row.locator('td[data-field="last_seq"]').inner_text() == "12"
    assert row.locator('td[data-field="dead_letters"]').inner_text() == "1"
    assert "lost" in row.locator("td").first.inner_text()  # flagged as trouble, on top
    assert page.locator("#topics tbody tr").first.get_attribute("data-topic") == TOPIC
    expect(page.locator("#workers-up")).to_contain_text("1 up")
    # The receiver's counters are per process: in a full run they include other tests' requests.
    shown_rejections = dict(
        line.split("\t") for line in page.locator("#rejections tr").all_inner_texts()
    )
    assert shown_rejections == receiver_rejections(run)
    assert int(shown_rejections["bad_signature"]) >= 1
    shoot(page, run, "overview")


def test_topic_page_shows_the_lost_range_and_charts(run: Run, page: Page) -> None:
    page.goto("/")
    page.get_by_role("link", name=TOPIC, exact=True).click()
    expect(page.locator("h1")).to_contain_text(f"{CACHE} / {TOPIC}")
    expected = stats_json(run)["lost_ranges"]
    labels = [
        str(r["first"]) if r["first"] == r["last"] else f"{r['first']}-{r['last']}"
        for r in expected
    ]
    assert page.locator("#lost-ranges td.range").all_inner_texts() == labels == ["5"]
    expect(page.locator("#chart-throughput canvas")).to_have_count(1)
    shoot(page, run, "topic")


def test_an_events_trace_shows_its_route_run_and_sent_outbox_row(run: Run, page: Page) -> None:
    page.goto("/events")
    page.fill("input[name=cache]", CACHE)
    page.fill("input[name=from_seq]", "1")
    page.fill("input[name=to_seq]", "1")
    page.click("button[type=submit]")
    results = page.locator("#event-results tbody tr")
    expect(results).to_have_count(1)
    shoot(page, run, "events")
    results.locator("a").first.click()
    expect(page.locator("h1")).to_contain_text("number 1")
    assert '"text": "order 1"' in page.locator("#raw-body").inner_text().replace('":"', '": "')
    runs = page.locator("#runs tbody tr")
    expect(runs).to_have_count(1)
    assert runs.locator("td").nth(0).inner_text() == "shout"
    assert runs.locator("td").nth(1).inner_text() == "done"
    outbox = page.locator("#outbox tbody tr")
    expect(outbox).to_have_count(1)
    assert "sent" in outbox.inner_text()
    assert outbox.locator("td.sent-at").inner_text() != "-"
    assert "ORDER 1" in outbox.inner_text()
    shoot(page, run, "trace")


def test_a_dead_letter_replayed_from_the_page_is_sent(run: Run, page: Page) -> None:
    run.broken_file.unlink()  # the fix
    page.goto("/dead-letters")
    letters = page.locator("#letters tbody tr")
    expect(letters).to_have_count(1)
    expect(page.locator("#reasons")).to_contain_text("boom: fails until the fix is deployed")
    shoot(page, run, "dead-letters")
    letters.locator("input[type=checkbox]").check()
    page.click("#replay-selected")
    expect(page.locator("#replay-count")).to_contain_text(
        "Replay 1 run of 1 event (1 dead letter chosen)"
    )
    shoot(page, run, "replay-confirm")
    page.click("#confirm-replay")
    expect(page.locator("#replay-progress")).to_have_attribute("data-done", "yes", timeout=30000)
    expect(page.locator("#replay-progress")).to_contain_text("outbox rows sent 1")
    shoot(page, run, "replay-progress")
    sent = """SELECT count(*) FROM outbox o JOIN events e ON e.id = o.event_id
        WHERE e.text = 'boom' AND o.status = 'sent' AND o.payload::text LIKE '%BOOM%'"""
    assert _count(run.settings, sent) == 1
    unresolved = "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL"
    assert _count(run.settings, unresolved) == 0
