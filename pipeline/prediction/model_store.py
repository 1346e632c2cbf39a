"""Fitted models kept per device and model in Redis, for the next warm start.

A model's state is the JSON its module produced (for Prophet, Prophet's own
``model_to_json``; never a pickle), stored zlib-compressed in a hash beside the
implementation version that wrote it, the event time it was trained until, the
job that fitted it and a revision number counting the saves. A state is only
handed back to the same implementation version, because Prophet documents no
compatibility of its JSON across releases: after an upgrade the next fit of
each device is simply cold. A save is skipped when the stored model was trained
until a later time, so a slow worker finishing an old window never replaces a
newer model.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from typing import Any

import redis

from pipeline.storage import Keys

log = logging.getLogger(__name__)

# Replace the stored model only with one trained until the same or a later time.
_SAVE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'trained_until')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'trained_until', ARGV[1], 'version', ARGV[2], 'job_id', ARGV[3],
           'saved_at', ARGV[4], 'state', ARGV[5])
return redis.call('HINCRBY', KEYS[1], 'revision', 1)
"""


class ModelStore:
    """Save and load the fitted-model state of (device, model)."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self._save = client.register_script(_SAVE_IF_NEWER)

    def save(
        self,
        device_id: str,
        model: str,
        state: dict[str, Any],
        trained_until: float,
        job_id: str,
    ) -> int:
        """Store a fitted model's state; returns its revision, or 0 if a newer one is kept.

        ``state`` must hold a ``version`` (the implementation that wrote it).
        """
        payload = zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 1)
        return int(
            self._save(
                keys=[self.keys.fitted_model(device_id, model)],
                args=[repr(float(trained_until)), state["version"], job_id, time.time(), payload],
            )
        )

    def load(self, device_id: str, model: str, version: str) -> dict[str, Any] | None:
        """The stored state if it was written by ``version``, else None (fit cold)."""
        key = self.keys.fitted_model(device_id, model)
        stored_version, payload = self.client.hmget(key, "version", "state")
        if payload is None:
            return None
        if stored_version is None or stored_version.decode() != version:
            log.info(
                "stored model of %s/%s is from %s, not %s: fitting cold",
                device_id,
                model,
                stored_version.decode() if stored_version else "an unknown version",
                version,
            )
            return None
        return json.loads(zlib.decompress(payload))
