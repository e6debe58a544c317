"""Producer stage: list video keys under a storage prefix and enqueue the new ones."""
