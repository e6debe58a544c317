"""Shared pieces of moments-stream: settings, the Redis key schema, logging and errors.

Each pipeline stage owns its own package (``producer``, ``consumer``, ``aggregator``);
this package holds only what all of them must agree on.
"""

__version__ = "0.1.0"
