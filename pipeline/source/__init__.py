"""The device side: a Sensibo API v2 client, and a simulator of that API for local runs."""
