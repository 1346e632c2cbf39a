"""Changelogged Faust tables: the job manager's and ingest's processing pointers.

They replace the seed design's pointer log files: every update goes to a Kafka
changelog topic, so a restarted or rebalanced worker recovers the pointers.
"""
