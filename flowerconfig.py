"""Flower settings read by `celery -A pipeline.celery_app flower` run from this directory.

Basic auth is always on: FLOWER_USER / FLOWER_PASSWORD, or a password generated once and kept in
PIPELINE_HOME/flower-password, on every path including /metrics and /healthcheck.
`pipeline flower` applies the same rule.
"""

from pipeline.cli.flower import basic_auth as _basic_auth
from pipeline.cli.flower import guard_monitoring
from pipeline.config import get_settings

basic_auth = [_basic_auth(get_settings())]
guard_monitoring()
