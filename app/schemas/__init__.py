"""Pydantic request and response models, by resource; they import neither db nor engine."""
