"""The bytes that leave for each channel: e-mail messages (S/MIME or for the [secure] gateway) and
print-and-post files. Message-IDs are derived from the letter's ledger id, so a resent letter carries the
same Message-ID and the receiver can tell it is the same one.

Subjects and file names never carry patient data (docs/architecture.md): only the service's name.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib

from caldicott.crypto.smime import envelope, envelope_der

SUBJECT = "Letter from {service}"
SECURE_TAG = "[secure]"
DOMAIN = "caldicott.invalid"


def message_id(item_id: str) -> str:
    return f"<{item_id}@{DOMAIN}>"


def boundary_for(key: str) -> str:
    """A MIME boundary derived from ``key`` (a ledger or disclosure id): the same content gives the same bytes."""
    return "=_caldicott_" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _b64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def note_with_attachment(note: str, attachment: bytes, *, filename: str, content_type: str, boundary: str) -> bytes:
    """A multipart/mixed entity: a UTF-8 text note and one attachment (a letter's PDF, a disclosure's zip).

    Written directly rather than with the email package's generator, which costs more than rendering a letter.
    Parts are base64, so the boundary can never occur in them."""
    return b"".join([
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\nMIME-Version: 1.0\r\n\r\n'.encode(),
        f"--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n".encode(),
        _b64_lines(note.encode()),
        f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n".encode(),
        _b64_lines(attachment),
        f"--{boundary}--\r\n".encode(),
    ])


def _inner_bytes(pdf: bytes, body: str, filename: str, boundary: str) -> bytes:
    return note_with_attachment(body, pdf, filename=filename, content_type="application/pdf", boundary=boundary)


def _headers(item_id: str, sender: str, to: str, subject: str) -> list[tuple[str, str]]:
    return [("From", sender), ("To", to), ("Subject", subject), ("Date", email.utils.formatdate(usegmt=True)),
            ("Message-ID", message_id(item_id))]


def smime_email(item_id: str, *, pdf: bytes, body: str, sender: str, to: str, certificate_pem: str | bytes,
                service: str, filename: str = "letter.pdf") -> bytes:
    """An RFC 5322 message whose whole content (body and PDF) is S/MIME encrypted to ``certificate_pem``."""
    inner = _inner_bytes(pdf, body, filename, boundary_for(item_id))
    enveloped = envelope(inner, certificate_pem)
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(item_id, sender, to, SUBJECT.format(service=service)))
    return head.encode() + enveloped


def gateway_email(item_id: str, *, pdf: bytes, body: str, sender: str, to: str, service: str,
                  filename: str = "letter.pdf") -> bytes:
    """A message for the provider's NHSmail encryption gateway: ``[secure]`` in the subject makes it
    encrypt the message to the (non-NHSmail) patient address before it leaves NHSmail."""
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(item_id, sender, to,
                                                        f"{SECURE_TAG} " + SUBJECT.format(service=service)))
    return head.encode() + _inner_bytes(pdf, body, filename, boundary_for(item_id))


def post_file(pdf: bytes, certificate_pem: str | bytes) -> bytes:
    """A letter for the print-and-post batch: the PDF as DER EnvelopedData to the print house's certificate."""
    return envelope_der(pdf, certificate_pem)
