"""Where the disclosure flow gets its configuration: outputs, outbox, senders, pseudonym key, opt-outs.

* Output folder: ``CALDICOTT_OUTPUT_DIR`` (letters under ``disclosures/<id>/``).
* Outbox (channel ``outbox``): ``CALDICOTT_DISCLOSURE_OUTBOX``, default ``<output dir>/disclosure-outbox``.
* Pseudonymisation key for research extracts: the password of connection ``caldicott_pseudonym_key``, or
  ``CALDICOTT_PSEUDONYM_KEY``; at least 16 bytes. Without one, research extracts are not built.
* National data opt-out for research extracts: the time-limited NDOP cache in the state database
  (:mod:`caldicott.policy.ndop_cache`), keyed with the password of connection ``caldicott_ndop_cache_key``
  (:func:`caldicott_airflow.ndop.ndop_cache_key`; no key: the task fails, naming it); every cohort number must
  have a current answer, else the extract is not built.
  The opt-out is never assumed to be empty.
* Connections a disclosure may use: only those the deployment lists in ``CALDICOTT_DISCLOSURE_CONNECTIONS``
  (comma-separated connection ids). Unset or empty: none, so only the ``outbox`` channel works (fail closed).
  A requester cannot name an arbitrary connection (and so an arbitrary server) in the run's conf.
* What the approver is shown and the approval binds (:func:`endpoint`): the connection's host and port, or the
  outbox folder; the release refuses if the connection points elsewhere by then.
* Channel ``sftp``: the Airflow SSH/SFTP connection named in the request's ``connection_id`` (default
  ``caldicott_sftp_disclosure``), host key pinned (``plugins/caldicott_airflow/sftp.py``); the remote
  directory is ``recipient_address``.
* Channel ``smime-email``: the Airflow SMTP connection named in ``connection_id`` (default ``caldicott_smtp``,
  the relay the GP letters use; its ``from_email`` extra is the sender), through the project's
  :class:`caldicott.transport.smtp.SmtpSender` wrapped by :class:`caldicott.disclosure.mail.DisclosureMailSender`;
  ``recipient_address`` is the requester's secure mailbox.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from caldicott.disclosure.request import DisclosureRequest


class ConfigMissing(RuntimeError):
    """A setting the flow needs is absent; the message names the setting."""


def output_dir() -> Path:
    return Path(os.environ.get("CALDICOTT_OUTPUT_DIR", "outputs"))


def outbox_dir() -> Path:
    return Path(os.environ.get("CALDICOTT_DISCLOSURE_OUTBOX") or output_dir() / "disclosure-outbox")


SMTP_CONN_ID = "caldicott_smtp"
SFTP_CONN_ID = "caldicott_sftp_disclosure"
DEFAULT_CONN = {"sftp": SFTP_CONN_ID, "smime-email": SMTP_CONN_ID}
DEFAULT_PORT = {"sftp": 22, "smime-email": 25}


def allowed_connections() -> frozenset[str]:
    """The connection ids the deployment lets disclosures use (``CALDICOTT_DISCLOSURE_CONNECTIONS``)."""
    raw = os.environ.get("CALDICOTT_DISCLOSURE_CONNECTIONS", "")
    return frozenset(c.strip() for c in raw.split(",") if c.strip())


def connection_for(channel: str, connection_id: str | None) -> str | None:
    """The connection a request's channel uses (its own or the default); refused unless the deployment allows it.

    The outbox needs none (None). The error names the connection id and the setting, never request values.
    """
    if channel == "outbox":
        return None
    conn_id = connection_id or DEFAULT_CONN.get(channel)
    if not conn_id:
        raise ConfigMissing(f"channel {channel} is not configured for disclosures here")
    if conn_id not in allowed_connections():
        raise ConfigMissing(f"connection {conn_id!r} is not one the deployment allows for disclosures "
                            "(CALDICOTT_DISCLOSURE_CONNECTIONS)")
    return conn_id


def endpoint(channel: str, connection_id: str | None) -> dict[str, str]:
    """Where a disclosure by ``channel`` would go, as the approver is shown it and the approval binds it."""
    conn_id = connection_for(channel, connection_id)
    if conn_id is None:
        return {"folder": str(outbox_dir().resolve())}
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return {"connection": conn_id, "host": str(conn.host or ""),
            "port": str(conn.port or DEFAULT_PORT.get(channel, ""))}


@contextlib.contextmanager
def open_sender(req: DisclosureRequest) -> Iterator:
    """The sender for the request's channel, open for the release and closed after it."""
    connection_for(req.channel, req.connection_id)   # the allow-list again, at the moment of sending
    if req.channel == "outbox":
        from caldicott.disclosure.outbox import OutboxSender

        yield OutboxSender(outbox_dir())
    elif req.channel == "sftp":
        from caldicott_airflow.sftp import sftp_sender

        yield sftp_sender(req.connection_id or SFTP_CONN_ID, peer=req.recipient)
    elif req.channel == "smime-email":
        from caldicott.disclosure.mail import DisclosureMailSender

        from caldicott_airflow.smtp import smtp_sender

        with smtp_sender(req.connection_id or SMTP_CONN_ID) as sender:
            yield DisclosureMailSender(sender)
    else:
        raise ConfigMissing(f"channel {req.channel} is not configured for disclosures here")


def pseudonym_key() -> bytes | None:
    try:
        from airflow.sdk import BaseHook

        pw = BaseHook.get_connection("caldicott_pseudonym_key").password
        if pw:
            return pw.encode()
    except Exception as exc:  # absent connection: fall back to the environment
        import logging

        logging.getLogger(__name__).debug("no caldicott_pseudonym_key connection (%s)", type(exc).__name__)
    key = os.environ.get("CALDICOTT_PSEUDONYM_KEY")
    return key.encode() if key else None


def ndop_source(state):
    """A lookup of a cohort's opt-outs in the NDOP cache of the state database, keyed with the deployment's secret.

    No override: tests that need other answers fill the cache (or inject a lookup) themselves.
    """
    from caldicott.disclosure.package import ndop_from_cache

    from caldicott_airflow.ndop import ndop_cache_key

    return ndop_from_cache(state, ndop_cache_key())
