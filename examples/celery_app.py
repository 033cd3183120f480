"""ekv in a Celery app: each worker process opens the store once (worker_process_init) and closes
it when it exits; the tasks read and write it, and the web app processes open the same data
directory. docs/celery.md explains it; tests/test_guides.py runs a real worker on it.

The broker here is kombu's filesystem transport (a folder, no server) so that the example runs
anywhere; a site would use its Redis or RabbitMQ. Run:
    EKV_DATA_DIR=var/ekv CELERY_BROKER_DIR=var/broker celery -A celery_app --workdir examples worker"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

import ekv

DATA_DIR = os.environ.get("EKV_DATA_DIR", "var/ekv")
BROKER_DIR = Path(os.environ.get("CELERY_BROKER_DIR", "var/broker"))

app = Celery("celery_app", broker="filesystem://")
app.conf.broker_transport_options = {
    "data_folder_in": str(BROKER_DIR / "queue"),
    "data_folder_out": str(BROKER_DIR / "queue"),
    "control_folder": str(BROKER_DIR / "control"),
}
for folder in ("queue", "control"):
    (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)

kv: ekv.EKV | None = None


@worker_process_init.connect
def open_store(**_: Any) -> None:
    # In each pool process (prefork children), once: the web app opens the same data directory.
    global kv
    kv = ekv.EKV("web", data_dir=DATA_DIR)


@worker_process_shutdown.connect
def close_store(**_: Any) -> None:
    if kv is not None:
        kv.close()


def store() -> ekv.EKV:
    if kv is None:
        raise RuntimeError("the store opens in worker_process_init: run the tasks in a Celery worker")
    return kv


@app.task
def summarize(prefix: str) -> int:
    """Sum the ``amount`` of every order under ``prefix`` and store the report for the web app."""
    orders = store().scan(prefix)
    total = sum(order["amount"] for order in orders.values())
    store().put(f"report/{prefix}", {"orders": len(orders), "total": total, "pid": os.getpid()})
    return total
