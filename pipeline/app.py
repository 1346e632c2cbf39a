"""The Faust application: ``faust -A pipeline.app worker -l info``.

Importing this module builds the app from validated settings and registers
every agent, table, timer and web view, so that the ``faust`` command, the
tests and the ``pipeline`` command all see the same application. Invalid
settings stop the import with a message that names them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import faust

from pipeline.connections import faust_broker_credentials
from pipeline.logs import faust_logging_config
from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.table_store import MEMORY_SCHEME as PARTITIONED_MEMORY
from pipeline.table_store import SCHEME as COMMITTED_ROCKSDB
from pipeline.transport import Transport


class App(faust.App):
    """Faust's app on the Kafka transport of ``pipeline.transport``, whose
    commits never split an event and whose tables recover from every committed
    changelog record."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> App:
    """Build the Faust app for these settings (topics and tables attach to it)."""
    datadir = Path(settings.data_dir) / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    return App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_broker_credentials(settings),
        store=f"{PARTITIONED_MEMORY if settings.table_store == 'memory' else COMMITTED_ROCKSDB}://",
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 4),
        broker_rebalance_timeout=max(settings.session_timeout_seconds, 10.0),
        consumer_group_instance_id=settings.group_instance_id or None,
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        web_port=settings.web_port,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        datadir=str(datadir),
        # Topics that Faust creates at start-up can still be missing from the broker's
        # metadata when the group first assigns partitions; a short metadata age makes
        # the consumer notice them and rebalance within seconds rather than minutes.
        consumer_metadata_max_age_ms=5000,
        key_serializer="raw",
        value_serializer="json",
        logging_config=faust_logging_config(settings),
    )


try:
    settings = load_settings()
except SettingsError as exc:
    sys.exit(f"pipeline: {exc}")

app = create_app(settings)

# Registration by import: topics, tables, agents and views attach to `app`.
from agents import accuracy, connector, dead_letters, ingest, job_manager, replay  # noqa: E402, F401
from pipeline import metrics_view, probes, views  # noqa: E402, F401
