"""Where the disclosure flow gets its configuration: outputs, outbox, senders, pseudonym key, opt-outs.

* Output folder: ``CALDICOTT_OUTPUT_DIR`` (letters under ``disclosures/<id>/``).
* Outbox (channel ``outbox``): ``CALDICOTT_DISCLOSURE_OUTBOX``, default ``<output dir>/disclosure-outbox``.
* Pseudonymisation key for research extracts: the password of connection ``caldicott_pseudonym_key``, or
  ``CALDICOTT_PSEUDONYM_KEY``; at least 16 bytes. Without one, research extracts are not built.
* National data opt-out for research extracts: the time-limited NDOP cache in the state database
  (:mod:`caldicott.policy.ndop`); every cohort number must have a current answer, else the extract is not
  built. ``CALDICOTT_NDOP_OPTED_OUT_FILE`` (opted-out NHS numbers, one a line) overrides it, for tests.
  The opt-out is never assumed to be empty.
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


@contextlib.contextmanager
def open_sender(req: DisclosureRequest) -> Iterator:
    """The sender for the request's channel, open for the release and closed after it."""
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


def ndop_source(state=None):
    """Opted-out numbers (file override) or a lookup in the NDOP cache of the state database."""
    path = os.environ.get("CALDICOTT_NDOP_OPTED_OUT_FILE")
    if path:
        return {line.strip().rstrip(",") for line in Path(path).read_text().splitlines() if line.strip()}
    if state is None:
        return None
    from caldicott.disclosure.package import ndop_from_cache

    return ndop_from_cache(state)
