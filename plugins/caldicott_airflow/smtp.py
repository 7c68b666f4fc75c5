"""The SMTP sender for a flow, from an Airflow SMTP connection (GP letters, disclosures by S/MIME e-mail).

One place that knows how the SMTP provider's hook hands over its client, so both flows send the same way:
one connection a batch, the connection's ``from_email`` or else the service's own address as sender.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def smtp_sender(conn_id: str) -> Iterator:
    """An open :class:`caldicott.transport.smtp.SmtpSender` on ``conn_id``; the connection closes on exit."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from caldicott.letters.render import Service
    from caldicott.transport.smtp import SmtpSender

    with SmtpHook(conn_id) as hook:
        # the provider keeps the logged-in smtplib client here; it has no public accessor for it
        yield SmtpSender(hook._smtp_client, hook.from_email or Service().email)
