"""The top-level app: ``moments-stream run DIR`` drives every stage on one machine.

Layers, top to bottom: this app; the stages ``producer``, ``consumer`` and ``aggregator`` (each
imports only the shared core below it, never another stage); the shared core ``moments_stream``
(settings, key schema, ledger, queues, the outcome message), which imports no stage.
"""
