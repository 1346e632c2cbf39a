"""Sensor forecasts: stream processing on Faust that keeps ML forecasts fresh.

Data flow: device API -> connector -> ``readings-raw`` -> ingest agent ->
``readings`` (+ Redis) -> job-manager agent -> RQ queue -> prediction workers ->
Redis forecasts -> dashboard and web views.
"""

__version__ = "0.1.0"
