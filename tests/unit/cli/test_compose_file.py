"""docker-compose.yml and its dev layer agree with the CLI, Settings and the sample routes.

No Docker engine runs here, so the files are parsed and checked against the code they start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from pipeline.cli import cli
from pipeline.config import Settings
from pipeline.workflows.routes import load_routes

ROOT = Path(__file__).resolve().parents[3]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DEV: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.dev.yml").read_text())["services"]
APP_SERVICES = ["migrate", "receiver", "worker", "listener", "beat", "flower", "dashboard"]
IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}


def test_every_part_of_the_pipeline_is_a_service() -> None:
    assert set(SERVICES) == {"postgres", "redis", *APP_SERVICES}
    assert set(DEV) == {"momento-local", *APP_SERVICES}


def _command(name: str) -> list[str]:
    return list((DEV if name == "momento-local" else SERVICES)[name]["command"])


@pytest.mark.parametrize("name", [*APP_SERVICES, "momento-local"])
def test_command_is_a_valid_pipeline_invocation(name: str) -> None:
    argv = _command(name)
    assert argv[0] == "pipeline"
    ctx = cli.make_context("pipeline", list(argv[1:]), resilient_parsing=False)
    args = [*ctx._protected_args, *ctx.args]
    command: click.Command = cli
    while isinstance(command, click.Group):
        sub_name, sub, args = command.resolve_command(ctx, args)
        assert sub is not None, f"{name}: unknown subcommand {sub_name}"
        ctx = sub.make_context(str(sub_name), list(args), parent=ctx)
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        command = sub
    assert not ctx.args, f"{name}: unexpected arguments {ctx.args}"


@pytest.mark.parametrize("name", [*APP_SERVICES, "postgres"])
def test_environment_names_are_settings_fields(name: str) -> None:
    fields = {field.upper() for field in Settings.model_fields}
    unknown = set(SERVICES[name].get("environment", {})) - fields - IMAGE_ENV
    assert not unknown, f"{name} sets variables Settings does not read: {unknown}"


def test_secrets_come_from_the_environment_not_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for variable in ("POSTGRES_PASSWORD", "PIPELINE_WEBHOOK_SECRETS", "FLOWER_PASSWORD"):
        assert f"${{{variable}:?" in text


def test_app_services_wait_for_healthy_stores_and_migrations() -> None:
    for name in ("receiver", "worker", "listener", "beat", "flower"):
        deps = SERVICES[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "receiver", "worker"):
        assert SERVICES[name]["healthcheck"]["test"]


def test_worker_scales_beat_is_single_and_local_momento_is_dev_only() -> None:
    assert "container_name" not in SERVICES["worker"]
    assert "ports" not in SERVICES["worker"]
    assert SERVICES["beat"]["deploy"]["replicas"] == 1
    assert "--appendonly" in SERVICES["redis"]["command"]


def test_dev_layer_points_every_pipeline_service_at_the_local_server() -> None:
    argv = _command("momento-local")
    port = argv[argv.index("--port") + 1]
    for name in APP_SERVICES:
        assert DEV[name]["environment"]["MOMENTO_LOCAL"] == f"momento-local:{port}"
        assert "momento-local" in DEV[name]["depends_on"]
        assert "MOMENTO_LOCAL" not in SERVICES[name].get("environment", {})  # production: none


def test_dev_local_server_publishes_its_admin_api_on_loopback() -> None:
    argv = _command("momento-local")
    published = {p.rsplit(":", 1)[-1]: p for p in DEV["momento-local"]["ports"]}
    for flag in ("--port", "--admin-port"):
        port = argv[argv.index(flag) + 1]
        assert published[port] == f"127.0.0.1:{port}:{port}"


def test_dev_local_server_registers_a_webhook_for_every_sample_route() -> None:
    argv = _command("momento-local")
    hooks = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--webhook"]
    registered = {tuple(hook.split("=", 1)[0].split(":", 1)) for hook in hooks}
    receiver = _command("receiver")
    url = f"http://receiver:{receiver[receiver.index('--port') + 1]}/webhooks/momento"
    assert {hook.split("=", 1)[1] for hook in hooks} == {url}
    assert "--webhook-secret" in argv
    caches = {argv[i + 1] for i, arg in enumerate(argv) if arg == "--cache"}
    table = load_routes(ROOT / "routes.toml")
    subscribed = set(table.subscriptions)
    for route in table:
        if (route.cache, route.topic) in subscribed:
            continue
        assert any(route.matches(cache, topic) for cache, topic in registered), route.name
    assert not registered & subscribed  # those topics are read by `pipeline listen`
    assert {cache for cache, _ in registered | subscribed} <= caches
