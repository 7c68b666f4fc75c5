"""The SMTP sender for a flow, from an Airflow SMTP connection (GP letters, disclosures by S/MIME e-mail).

One place that turns a connection into a sender, so both flows (and the on-call e-mail, :func:`smtp_client`) send
the same way: one connection a batch,
the connection's ``from_email`` extra as sender (required: no built-in default address). Transport security
fails closed (:mod:`caldicott.transport.smtp`): SMTPS or STARTTLS with the server's certificate verified
(``ca_file`` extra, else the system CAs); plain SMTP only to a loopback relay. Extras keep the meaning Airflow's
SMTP provider gives them (``disable_ssl``, ``disable_tls``, ``timeout``), so the same connection form works; the
provider's hook is not used because it cannot pin a CA file and lets ``ssl_context: "none"`` switch
verification off.
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Iterator


@contextlib.contextmanager
def smtp_client(conn_id: str) -> Iterator[tuple[smtplib.SMTP, str]]:
    """``(client, from_addr)``: an open, TLS-checked ``smtplib`` client on ``conn_id`` and the connection's
    ``from_email``; the connection closes on exit. For mail that is not a flow's outbound item (the on-call alert).

    Raises :class:`caldicott.transport.smtp.SmtpSecurityError` (naming ``conn_id``) before connecting when the
    connection would send in clear over a network or without verifying the server; ``ValueError`` without
    ``from_email``."""
    from airflow.sdk import BaseHook
    from caldicott.transport.smtp import SmtpSettings, open_client

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    settings = SmtpSettings.from_connection(conn_id, host=conn.host, port=conn.port, login=conn.login,
                                            password=conn.password, extra=extra)
    from_addr = str(extra.get("from_email") or "").strip()
    if not from_addr:
        raise ValueError(f"SMTP connection {conn_id!r} has no from_email extra (the sender address of its mail)")
    client = open_client(settings)
    try:
        yield client, from_addr
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()


@contextlib.contextmanager
def smtp_sender(conn_id: str) -> Iterator:
    """An open :class:`caldicott.transport.smtp.SmtpSender` on ``conn_id``; the connection closes on exit.

    Raises :class:`caldicott.transport.smtp.SmtpSecurityError` (naming ``conn_id``) before connecting when the
    connection would send in clear over a network or without verifying the server."""
    from caldicott.transport.smtp import SmtpSender

    with smtp_client(conn_id) as (client, from_addr):
        yield SmtpSender(client, from_addr)
