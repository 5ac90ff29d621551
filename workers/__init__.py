"""Celery workers: thin task adapters over app/engine. Only the worker process imports this."""
