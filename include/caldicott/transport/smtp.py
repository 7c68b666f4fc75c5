"""SMTP sender: hands a complete RFC 5322 message (already S/MIME-encrypted, or marked for the
encryption gateway) to an SMTP client.

The client is any object with ``sendmail(from_addr, to_addrs, msg)`` (``smtplib.SMTP``); in Airflow it is
the one Airflow's SMTP provider opened from the ``caldicott_smtp`` connection (see ``dags/gp_letters.py``).
The message's Message-ID is derived from the ledger item id (:func:`caldicott.letters.messages.message_id`),
so if a worker dies between the server accepting a message and the ledger saying so, the resent copy has
the same Message-ID and the receiving system can drop the duplicate. Plain SMTP cannot be asked whether
a message arrived, so :meth:`already_delivered` returns None.
"""

from __future__ import annotations

import smtplib
from typing import Protocol

from caldicott.transport.base import Outbound, TransportError


class SmtpClient(Protocol):
    def sendmail(self, from_addr: str, to_addrs, msg: bytes) -> dict: ...


class SmtpSender:
    """One connection, reused for every message of a batch (one EHLO, not one per letter)."""

    channel = "smtp"
    # SMTP cannot be asked what it received: the gateway sends one message at a time and records ``sent``
    # right after each 250, so at most the one message whose reply was lost can be sent again
    reconcilable = False

    def __init__(self, client: SmtpClient, from_addr: str) -> None:
        self.client = client
        self.from_addr = from_addr

    def send(self, item: Outbound) -> str:
        if not item.address:
            raise TransportError(f"item {item.item_id}: no address", retryable=False)
        try:
            refused = self.client.sendmail(self.from_addr, [item.address], item.payload)
        except smtplib.SMTPRecipientsRefused as exc:
            raise TransportError(f"item {item.item_id}: recipient refused by SMTP server", retryable=False) from exc
        except smtplib.SMTPResponseException as exc:  # 5xx is the server's final word; 4xx means try later
            raise TransportError(f"item {item.item_id}: SMTP {exc.smtp_code} ({type(exc).__name__})",
                                 retryable=not 500 <= exc.smtp_code < 600) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransportError(f"item {item.item_id}: SMTP error {type(exc).__name__}") from exc
        if refused:
            raise TransportError(f"item {item.item_id}: recipient refused by SMTP server", retryable=False)
        return f"<{item.item_id}@caldicott.invalid>"

    def already_delivered(self, item: Outbound) -> str | None:
        return None
