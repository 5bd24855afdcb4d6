"""docker-compose.yml agrees with the CLI and Settings (no Docker engine here, so we parse it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from pipeline.cli import cli
from pipeline.config import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = [
    "migrate",
    "receiver",
    "worker",
    "listener",
    "beat",
    "flower",
    "dashboard",
    "momento-local",
]
IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}


def test_every_part_of_the_pipeline_is_a_service() -> None:
    assert set(SERVICES) == {"postgres", "redis", *APP_SERVICES}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_command_is_a_valid_pipeline_invocation(name: str) -> None:
    argv = SERVICES[name]["command"]
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
    assert SERVICES["momento-local"]["profiles"] == ["dev"]
    assert "--appendonly" in SERVICES["redis"]["command"]
