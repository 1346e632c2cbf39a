"""Shared fixtures: real Redis and Kafka, isolated per test.

The test command starts the project's local Kafka and Redis before pytest runs
(`pipeline services up`); these fixtures only connect, and isolate tests by
Redis database number and topic prefix, cleaning up after themselves.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import redis

from pipeline.settings import Settings, load_settings

# Another database (TEST_REDIS_DB=N) keeps runs side by side from emptying each other's.
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))

# The Faust app imported into the test process (test_context tests) keeps its
# tables in memory and its data in a scratch folder, away from a running stack.
os.environ.setdefault("PIPELINE_TABLE_STORE", "memory")
os.environ.setdefault("PIPELINE_DATA_DIR", tempfile.mkdtemp(prefix="pipeline-tests-"))


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings of the local services the test command started."""
    return load_settings(environ={k: v for k, v in os.environ.items() if k in _SERVICE_VARS})


_SERVICE_VARS = {"PIPELINE_BROKER", "PIPELINE_REDIS_URL"}


@pytest.fixture(scope="session")
def redis_url(base_settings: Settings) -> str:
    """URL of a Redis database reserved for tests, verified reachable."""
    url = base_settings.redis_url.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {url} is not reachable ({exc}); run `pipeline services up`")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A clean Redis database, emptied again after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic prefix so that tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:8]}-"
