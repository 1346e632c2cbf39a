"""Faust agents, in the order data flows through them:
connector (device API -> readings-raw), ingest (-> readings + Redis),
job manager (-> RQ queue + jobs topic)."""
