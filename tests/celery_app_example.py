"""An application's own Celery app, as a shop might write it, with a task of its own."""

from __future__ import annotations

from celery import Celery


def make_app(broker: str, backend: str | None = None) -> Celery:
    app = Celery("shop", broker=broker, backend=backend, set_as_current=False)

    @app.task(name="shop.send_receipt", shared=False)
    def send_receipt(order: str) -> str:
        return f"receipt for {order}"

    return app
