"""Channel ``smime-email``: the approved package e-mailed to the requester's secure mailbox, S/MIME-encrypted.

The package is sealed when it is built (:func:`seal_for_mail`): the zip, with a short cover note, as one MIME
entity encrypted (:func:`caldicott.crypto.smime.envelope`, AES-256) to the requester's certificate. That
``application/pkcs7-mime`` part is what the state database keeps, what the approval's checksum binds to and what
the release gateway checks. :class:`DisclosureMailSender` adds only the outer routing headers (From, To, a
subject naming the disclosure id, Date, Message-ID) and hands the message to the project's SMTP sender
(:class:`caldicott.transport.smtp.SmtpSender`, as the GP letters use it). Everything about the request and the
patient is inside the envelope: the clear headers carry the disclosure id and addresses only.

The Message-ID is derived from the ledger item id (:func:`caldicott.letters.messages.message_id`), so a message
resent after a lost SMTP reply is recognisably the same message. :func:`package_from_message` is the
requester's side (tests, the demo): decrypt with their key and take the zip out.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
from dataclasses import replace

from caldicott.crypto.smime import envelope, open_envelope
from caldicott.letters.messages import boundary_for, message_id, note_with_attachment
from caldicott.policy.purposes import Protection
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.smtp import SmtpSender

CHANNEL = "smime-email"
SUBJECT = "Disclosure {disclosure_id} (S/MIME encrypted)"
_SMIME_MARKERS = (b"application/pkcs7-mime", b"enveloped-data")


def inner_entity(disclosure_id: str, reference: str, package_zip: bytes) -> bytes:
    """The MIME entity that is encrypted: a cover note and the package as ``<disclosure id>.zip``.

    Written directly (base64 parts, a boundary derived from the id) so the same package gives the same entity.
    """
    note = (f"Disclosure {disclosure_id}\r\nYour reference: {reference}\r\n\r\n"
            f"The attached {disclosure_id}.zip is the information approved for release in answer to your request. "
            "Its manifest.json lists what it contains, what was withheld and the rules applied.\r\n"
            f"SHA-256 of the zip: {hashlib.sha256(package_zip).hexdigest()}\r\n\r\n"
            "Keep it only as long as your purpose needs it; do not pass it on.\r\n")
    return note_with_attachment(note, package_zip, filename=f"{disclosure_id}.zip",
                                content_type=f'application/zip; name="{disclosure_id}.zip"',
                                boundary=boundary_for(disclosure_id))


def seal_for_mail(package_zip: bytes, certificate_pem: str | bytes, disclosure_id: str, reference: str) -> bytes:
    """The package as an S/MIME ``application/pkcs7-mime`` part to the requester's certificate (what is kept,
    approved and checked by the gateway). Raises ``CertificateError`` for an unusable certificate."""
    return envelope(inner_entity(disclosure_id, reference, package_zip), certificate_pem)


def package_from_message(message: bytes, certificate_pem: str | bytes, key_pem: str | bytes) -> bytes:
    """The requester's side: decrypt a delivered message and return the zip it carries."""
    inner = email.message_from_bytes(open_envelope(message, certificate_pem, key_pem), policy=email.policy.default)
    for part in inner.walk():
        payload = part.get_payload(decode=True) if part.get_content_type() == "application/zip" else None
        if isinstance(payload, bytes):
            return payload
    raise ValueError("the decrypted message carries no zip")


def _clean(value: str, what: str, item: Outbound) -> str:
    if not value or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise TransportError(f"item {item.item_id}: {what} missing or not a single header value", retryable=False)
    return value


def message(item: Outbound, from_addr: str) -> bytes:
    """The RFC 5322 message for ``item``: routing headers + the sealed part, exactly as approved.

    Refuses (not retryable) anything whose payload is not an S/MIME enveloped-data part: this sender never
    e-mails a package in clear, whatever the caller passes.
    """
    head_end = item.payload.find(b"\r\n\r\n")
    head = item.payload[:head_end] if head_end > 0 else b""
    if item.protection != Protection.SMIME or not all(m in head for m in _SMIME_MARKERS):
        raise TransportError(f"item {item.item_id}: payload is not an S/MIME envelope; not e-mailed", retryable=False)
    did = _clean(item.disclosure_id or "", "disclosure id", item)
    headers = [("From", _clean(from_addr, "sender address", item)), ("To", _clean(item.address, "address", item)),
               ("Subject", SUBJECT.format(disclosure_id=did)), ("Date", email.utils.formatdate(usegmt=True)),
               ("Message-ID", message_id(item.item_id))]
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode() + item.payload


class DisclosureMailSender:
    """:class:`SmtpSender` for disclosure packages: wraps the approved S/MIME part in its routing headers.

    SMTP cannot be asked what arrived (``reconcilable = False``): the gateway sends one message at a time and
    records it as sent right after the server's 250.
    """

    channel = CHANNEL
    reconcilable = False

    def __init__(self, smtp: SmtpSender) -> None:
        self.smtp = smtp

    def send(self, item: Outbound) -> str:
        return self.smtp.send(replace(item, payload=message(item, self.smtp.from_addr)))

    def already_delivered(self, item: Outbound) -> str | None:
        return self.smtp.already_delivered(item)
