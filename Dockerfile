# syntax=docker/dockerfile:1
# One image for every role; the command picks the role:
#   docker build -t sensor-forecasts:0.1.0 .
#   docker run sensor-forecasts:0.1.0                                   # Faust stream worker
#   docker run sensor-forecasts:0.1.0 pipeline prediction-worker
#   docker run sensor-forecasts:0.1.0 pipeline dashboard --address 0.0.0.0
#   docker run sensor-forecasts:0.1.0 pipeline simulator --host 0.0.0.0
# Settings come from PIPELINE_* variables or a mounted YAML file (PIPELINE_CONFIG).
# No secret enters a layer: keys and passwords are given to the container at run time.
#
# The base is pinned to an exact Python and Debian release (slim Debian, glibc: Prophet's,
# cmdstan's and rocksdict's manylinux wheels run as shipped). To pin the digest as well,
# append the one `docker buildx imagetools inspect python:3.11.14-slim-trixie` prints,
# as FROM python:3.11.14-slim-trixie@sha256:<digest>, in both stages.

FROM python:3.11.14-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY tables ./tables
COPY dashboard ./dashboard
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM python:3.11.14-slim-trixie AS runtime
LABEL org.opencontainers.image.title="sensor-forecasts" \
      org.opencontainers.image.description="Faust stream workers, RQ prediction workers, Bokeh dashboard and device API simulator" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 pipeline \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/pipeline --create-home \
    --shell /usr/sbin/nologin pipeline \
 && mkdir -p /var/lib/pipeline \
 && chown 10001:10001 /var/lib/pipeline
COPY --from=build /opt/venv /opt/venv
# MPLCONFIGDIR: Prophet imports matplotlib, which wants a writable cache directory;
# /tmp is the one writable place when the root filesystem is mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPELINE_DATA_DIR=/var/lib/pipeline \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /var/lib/pipeline
# Faust web view, Bokeh dashboard, device API simulator.
EXPOSE 6066 5006 8080
# The role is read from PID 1's command line; `python -m pipeline.health` skips the
# imports of the whole `pipeline` command, so the check costs a fraction of a second.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "pipeline.health"]
CMD ["faust", "-A", "pipeline.app", "worker", "-l", "info"]
