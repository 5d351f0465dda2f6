"""Celery entry point: ``celery -A tasks worker`` and ``celery -A tasks beat``; and
``tasks.install(app)`` for the application's own Celery app."""

from tasks.application import create_app
from tasks.install import install

app = create_app()

__all__ = ["app", "create_app", "install"]
