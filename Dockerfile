# momento-pipeline application image: receiver, worker, beat, flower, migrations, local Momento server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIPELINE_HOME=/var/lib/pipeline

WORKDIR /app
COPY pyproject.toml README.md alembic.ini flowerconfig.py routes.toml* ./
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY migrations ./migrations
# Editable install keeps migrations/ and alembic.ini next to the package, where `pipeline db upgrade`
# looks for them.
RUN pip install -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/pipeline --create-home pipeline
USER pipeline

EXPOSE 8000 5555 8080
CMD ["pipeline", "--help"]
