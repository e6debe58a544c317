"""Aggregator stage: drain the predictions queue into live per-category counts in Redis."""
