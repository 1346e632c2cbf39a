"""Faust agents, in the order data flows through them:
connector (device API -> readings-raw), ingest (-> readings + Redis),
job manager (-> RQ queue + jobs topic); beside them dead letters (counts
per device), replay (pointer resets) and accuracy (forecast errors)."""
