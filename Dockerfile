# One image for every role: Faust worker, prediction worker, dashboard, simulator.
#   docker build -t sensor-forecasts .
#   docker run sensor-forecasts faust -A pipeline.app worker -l info
#   docker run sensor-forecasts pipeline prediction-worker
#   docker run sensor-forecasts pipeline dashboard --address 0.0.0.0
# Settings come from PIPELINE_* variables or a mounted YAML (PIPELINE_CONFIG);
# no secret is baked into a layer.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY tables ./tables
COPY dashboard ./dashboard
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 pipeline
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIPELINE_DATA_DIR=/var/lib/pipeline
RUN mkdir -p /var/lib/pipeline && chown pipeline /var/lib/pipeline
USER pipeline
WORKDIR /home/pipeline
EXPOSE 6066 5006 8080
CMD ["faust", "-A", "pipeline.app", "worker", "-l", "info"]
