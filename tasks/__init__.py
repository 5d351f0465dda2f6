"""Celery entry point: ``celery -A tasks worker`` and ``celery -A tasks beat``."""

from tasks.application import create_app

app = create_app()

__all__ = ["app", "create_app"]
