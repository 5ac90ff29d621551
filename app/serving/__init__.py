"""The inference runtime: one base model per (model, label count) per process, an LRU cache of
materialised tasks under a memory budget, and a micro-batcher that groups requests by task."""
