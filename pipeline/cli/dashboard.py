"""`pipeline dashboard`: the live page, behind Flower's login."""

from __future__ import annotations

import click

from pipeline.cli.common import services, settings_or_exit


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8050, show_default=True)
@click.option(
    "--receiver-url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Receiver whose /metrics give accepted/s and rejections ('' for none).",
)
def dashboard(host: str, port: int, receiver_url: str) -> None:
    """Run the dashboard: topics, gaps, latency, backlog, dead letters, live (login: Flower's)."""
    import uvicorn

    from pipeline.cli.flower import flower_password
    from pipeline.config import load_settings
    from pipeline.dashboard.app import create_app

    with services(settings_or_exit(), create=False):  # a viewer never creates a store
        settings = load_settings()
        app = create_app(
            settings,
            user=settings.flower_user,
            password=flower_password(settings),
            receiver_url=receiver_url or None,
        )
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
