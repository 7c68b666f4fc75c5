"""On-call notification on task failure, free of patient data.

The message carries the DAG, task, run, try number, log link and the exception's *class* plus a
scrubbed message: exception text may quote data (a driver error can echo a row), so it is reduced to
text that cannot hold identifiers before it leaves (see :func:`caldicott.redact.scrub`).

Configured by environment variables (docs/runbook.md, docs/deployment.md), or per notifier:

* ``CALDICOTT_ONCALL_WEBHOOK``: URL that receives a JSON POST (a chat or paging integration);
  ``CALDICOTT_ONCALL_WEBHOOK_TOKEN``, if set, is sent as ``Authorization: Bearer ...``;
* ``CALDICOTT_ONCALL_EMAIL``: comma-separated addresses, sent over the SMTP connection ``CALDICOTT_SMTP_CONN_ID``
  (default ``smtp_default``; its extras carry ``from_email``) with the letters' fail-closed TLS policy
  (:mod:`caldicott.transport.smtp`: SMTPS or STARTTLS, server certificate verified; plain only to loopback).

Neither set: the alert is only logged (the task log and the scheduler already show the failure).
Alerting never raises: a broken webhook must not mask the task's own failure.
"""

from __future__ import annotations

import html
import json
import logging
import os
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from airflow.sdk import BaseNotifier
from caldicott.redact import scrub

log = logging.getLogger(__name__)

WEBHOOK_ENV = "CALDICOTT_ONCALL_WEBHOOK"
WEBHOOK_TOKEN_ENV = "CALDICOTT_ONCALL_WEBHOOK_TOKEN"  # noqa: S105 - the name of a variable
EMAIL_ENV = "CALDICOTT_ONCALL_EMAIL"
SMTP_CONN_ENV = "CALDICOTT_SMTP_CONN_ID"


def failure_message(context) -> dict:
    """A patient-free summary of a failed task instance, from an Airflow callback context."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    try:
        log_url = getattr(ti, "log_url", None)
    except Exception:  # log_url reads config; an alert without it is still an alert
        log_url = None
    return {
        "kind": "task_failed",
        "dag_id": dag_id,
        "task_id": getattr(ti, "task_id", "?"),
        "map_index": getattr(ti, "map_index", -1),
        "run_id": getattr(ti, "run_id", None) or context.get("run_id"),
        "try_number": getattr(ti, "try_number", None),
        "max_tries": getattr(ti, "max_tries", None),
        "log_url": log_url,
        "error_class": type(exc).__name__ if exc is not None else None,
        "error": scrub(str(exc)) if exc is not None else None,
    }


def subject_for(msg: dict) -> str:
    if msg.get("kind") == "deadline_missed":
        return f"[caldicott] deadline missed: {msg.get('dag_id')} {msg.get('alert', '')}".strip()
    return (f"[caldicott] task failed: {msg.get('dag_id')}.{msg.get('task_id')} "
            f"(try {msg.get('try_number')})")


def send_webhook(url: str, msg: dict, token: str | None = None, timeout: float = 10) -> bool:
    """POST ``msg`` as JSON to ``url``; True on a 2xx answer. Never raises."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(msg, default=str).encode(),  # noqa: S310
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured endpoint
            resp.read()
            return 200 <= resp.status < 300
    except Exception as exc:  # alerting must not mask the original failure
        log.error("on-call webhook failed: %s", type(exc).__name__)
        return False


def alert_email(to: list[str], from_addr: str, msg: dict) -> EmailMessage:
    """The alert as a short e-mail: a plain-text part and an HTML table, both from ``msg`` (no patient data)."""
    rows = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in msg.items())
    body = f"<p>Caldicott on-call alert (no patient data).</p><table>{rows}</table>"
    if msg.get("log_url"):
        body += f"<p><a href=\"{html.escape(str(msg['log_url']))}\">Task log</a></p>"
    mail = EmailMessage()
    mail["Subject"] = subject_for(msg)
    mail["From"] = from_addr
    mail["To"] = ", ".join(to)
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain="caldicott.invalid")
    mail.set_content("Caldicott on-call alert (no patient data).\n\n"
                     + "".join(f"{k}: {v}\n" for k, v in msg.items()))
    mail.add_alternative(body, subtype="html")
    return mail


def send_email(to: str, msg: dict, conn_id: str | None = None) -> bool:
    """Send ``msg`` as a short e-mail over the SMTP connection ``conn_id``. Never raises.

    Through :func:`caldicott_airflow.smtp.smtp_client`, the letters' own fail-closed transport: SMTPS or STARTTLS
    with the server verified (``ca_file`` extra or the system CAs), plain only to a loopback relay. Airflow's
    ``SmtpHook`` is not used: it would send in clear to any host whose extras say so, and let ``ssl_context: none``
    switch verification off. A connection the policy refuses is logged as a failed alert (the webhook may still
    carry it), never sent in clear."""
    conn_id = conn_id or os.environ.get(SMTP_CONN_ENV, "smtp_default")
    try:
        from caldicott_airflow.smtp import smtp_client

        recipients = [a.strip() for a in to.split(",") if a.strip()]
        with smtp_client(conn_id) as (client, from_addr):
            client.send_message(alert_email(recipients, from_addr, msg), from_addr, recipients)
        return True
    except Exception as exc:
        log.error("on-call e-mail failed: %s", type(exc).__name__)
        return False


def dispatch(msg: dict, *, webhook_url: str | None = None, email: str | None = None,
             smtp_conn_id: str | None = None) -> dict[str, bool]:
    """Send ``msg`` to every configured channel; returns {channel: delivered}."""
    log.error("caldicott on-call alert: %s", json.dumps(msg, default=str))
    sent: dict[str, bool] = {}
    url = webhook_url or os.environ.get(WEBHOOK_ENV)
    if url:
        sent["webhook"] = send_webhook(url, msg, os.environ.get(WEBHOOK_TOKEN_ENV))
    to = email or os.environ.get(EMAIL_ENV)
    if to:
        sent["email"] = send_email(to, msg, smtp_conn_id)
    return sent


class OnCallNotifier(BaseNotifier):
    """Tell on-call staff a task failed: webhook and/or e-mail, never patient data."""

    template_fields = ()

    def __init__(self, webhook_url: str | None = None, email: str | None = None,
                 smtp_conn_id: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url
        self.email = email
        self.smtp_conn_id = smtp_conn_id

    def notify(self, context) -> None:
        dispatch(failure_message(context), webhook_url=self.webhook_url, email=self.email,
                 smtp_conn_id=self.smtp_conn_id)
