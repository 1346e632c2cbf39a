"""Bokeh server lifecycle hooks of the directory app (Bokeh loads this file by name)."""

from dashboard.data import close_shared


def on_server_unloaded(_server_context: object) -> None:
    """Close the shared pollers' Redis and Kafka connections when the server stops."""
    close_shared()
