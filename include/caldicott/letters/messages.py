"""The bytes that leave for each channel: e-mail messages (S/MIME or for the [secure] gateway) and
print-and-post files. Message-IDs are derived from the letter's ledger id, so a resent letter carries the
same Message-ID and the receiver can tell it is the same one.

Subjects and file names never carry patient data (DESIGN.md): only the service's name.
"""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage

from caldicott.crypto.smime import envelope, envelope_der

SUBJECT = "Letter from {service}"
SECURE_TAG = "[secure]"
DOMAIN = "caldicott.invalid"


def message_id(item_id: str) -> str:
    return f"<{item_id}@{DOMAIN}>"


def _inner(pdf: bytes, body: str, filename: str) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg.set_content(body)
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=filename)
    return msg


def _headers(item_id: str, sender: str, to: str, subject: str) -> list[tuple[str, str]]:
    return [("From", sender), ("To", to), ("Subject", subject), ("Date", email.utils.formatdate(usegmt=True)),
            ("Message-ID", message_id(item_id))]


def smime_email(item_id: str, *, pdf: bytes, body: str, sender: str, to: str, certificate_pem: str | bytes,
                service: str, filename: str = "letter.pdf") -> bytes:
    """An RFC 5322 message whose whole content (body and PDF) is S/MIME encrypted to ``certificate_pem``."""
    inner = _inner(pdf, body, filename).as_bytes(policy=email.policy.SMTP)
    enveloped = envelope(inner, certificate_pem)
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(item_id, sender, to, SUBJECT.format(service=service)))
    return head.encode() + enveloped


def gateway_email(item_id: str, *, pdf: bytes, body: str, sender: str, to: str, service: str,
                  filename: str = "letter.pdf") -> bytes:
    """A message for the provider's NHSmail encryption gateway: ``[secure]`` in the subject makes it
    encrypt the message to the (non-NHSmail) patient address before it leaves NHSmail."""
    msg = _inner(pdf, body, filename)
    for k, v in _headers(item_id, sender, to, f"{SECURE_TAG} " + SUBJECT.format(service=service)):
        msg[k] = v
    return msg.as_bytes(policy=email.policy.SMTP)


def post_file(pdf: bytes, certificate_pem: str | bytes) -> bytes:
    """A letter for the print-and-post batch: the PDF as DER EnvelopedData to the print house's certificate."""
    return envelope_der(pdf, certificate_pem)
