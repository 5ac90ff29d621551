"""Persistence: SQLAlchemy 2.0 models, engine/session, and the query functions routes use."""
