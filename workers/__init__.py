"""Celery workers: the Celery app and thin tasks that take a job id and call app/. Only the
worker process imports this."""
