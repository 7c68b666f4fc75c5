"""SMTP sender: hands a complete RFC 5322 message (already S/MIME-encrypted, or marked for the
encryption gateway) to an SMTP client.

The client is any object with ``sendmail(from_addr, to_addrs, msg)`` (``smtplib.SMTP``); in Airflow it is
the one :func:`open_client` opened from the ``caldicott_smtp`` connection (``caldicott_airflow.smtp``).
The message's Message-ID is derived from the ledger item id (:func:`caldicott.letters.messages.message_id`),
so if a worker dies between the server accepting a message and the ledger saying so, the resent copy has
the same Message-ID and the receiving system can drop the duplicate. Plain SMTP cannot be asked whether
a message arrived, so :meth:`already_delivered` returns None.

**Transport security, fail closed** (:class:`SmtpSettings`, :func:`open_client`): a connection must use implicit
TLS (SMTPS) or STARTTLS, and the server's certificate is always verified (system CAs, or the connection's
``ca_file`` only; ``ssl_context: "none"`` is refused). A server that does not offer STARTTLS is not sent to in
clear. The one exception is plain SMTP to a **loopback** host (127.0.0.0/8, ::1, ``localhost``): a relay on
the same machine (the demo's stand-in, or a local MTA that itself relays over TLS) receives the message
without it ever crossing a network, so TLS there would protect nothing. Anything else is refused *before*
connecting, with an error that names the connection (not the host: an address is configuration, and
exception text reaches the on-call alert).
"""

from __future__ import annotations

import contextlib
import ipaddress
import smtplib
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from caldicott.transport.base import Outbound, TransportError


class SmtpClient(Protocol):
    def sendmail(self, from_addr: str, to_addrs: list[str], msg: bytes) -> dict[str, tuple[int, bytes]]: ...


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


# ---- transport security ----------------------------------------------------------------------------------

Tls = Literal["smtps", "starttls", "none"]

#: Certificate verification failures (OpenSSL ``X509_V_ERR_*``) in words an operator can act on.
_VERIFY_REASONS = {10: "it has expired", 18: "it is self-signed and not trusted", 19: "its CA is not trusted",
                   20: "its CA is not trusted", 21: "its CA is not trusted", 62: "it is not for this host name"}


class SmtpSecurityError(ValueError):
    """An SMTP connection refused for its transport security (names the connection, never the host).

    A configuration fault: retrying does not help; fix the connection's extras (see the module docs)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: a relay on this machine. Names are not resolved (DNS could
    say anything, and a lookup is itself traffic), so any other name counts as remote."""
    name = (host or "").strip().rstrip(".").lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _flag(conn_id: str, extra: dict[str, Any], key: str) -> bool:
    """An extras boolean, strictly (``"false"`` is false: Airflow's provider would read it as true)."""
    value = extra.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise SmtpSecurityError(f"SMTP connection {conn_id!r}: extra {key!r} is not a boolean")


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach an SMTP relay, already checked against the policy above (build with :meth:`from_connection`)."""

    conn_id: str
    host: str
    port: int | None
    tls: Tls
    ca_file: str | None = None
    login: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30

    @classmethod
    def from_connection(cls, conn_id: str, *, host: str | None, port: int | None, login: str | None = None,
                        password: str | None = None, extra: dict[str, Any] | None = None) -> SmtpSettings:
        """Settings from an Airflow SMTP connection's fields, with the provider's extras: ``disable_ssl``
        (false: implicit TLS, SMTPS), ``disable_tls`` (false, with ``disable_ssl``: STARTTLS), plus ``ca_file``
        (PEM bundle: the only CAs trusted; default the system's) and ``timeout``. Raises
        :class:`SmtpSecurityError` for a plain connection to anything but loopback, or one that would not verify
        the server."""
        extra = extra or {}
        if not (host or "").strip():
            raise SmtpSecurityError(f"SMTP connection {conn_id!r} has no host")
        if extra.get("ssl_context") not in (None, "default"):
            raise SmtpSecurityError(
                f"SMTP connection {conn_id!r}: extra ssl_context must be 'default' (or absent); certificate "
                f"verification cannot be turned off (give the server's CA in extra ca_file instead)")
        if not _flag(conn_id, extra, "disable_ssl"):
            tls: Tls = "smtps"
        elif not _flag(conn_id, extra, "disable_tls"):
            tls = "starttls"
        else:
            tls = "none"
        if tls == "none" and not is_loopback(host or ""):
            raise SmtpSecurityError(
                f"SMTP connection {conn_id!r} uses neither implicit TLS (SMTPS) nor STARTTLS (extras disable_ssl "
                f"and disable_tls are both set); refused: plain SMTP is allowed only to a relay on this machine "
                f"(127.0.0.0/8, ::1, localhost). Use STARTTLS (disable_ssl: true, disable_tls: false) or SMTPS.")
        ca_file = extra.get("ca_file") or None
        return cls(conn_id, (host or "").strip(), port or None, tls, str(ca_file) if ca_file else None,
                   login or "", password or "", float(extra.get("timeout", 30)))

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate and host name, TLS 1.2 or later; ``ca_file`` alone when given."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SmtpSecurityError(f"SMTP connection {self.conn_id!r}: extra ca_file cannot be read as PEM "
                                    f"certificates ({type(exc).__name__})") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def open_client(s: SmtpSettings) -> smtplib.SMTP:
    """A connected (and, with a login, authenticated) client for ``s``; TLS is set up before any credential or
    message is sent. Certificate failures and a missing STARTTLS raise :class:`SmtpSecurityError`."""
    context = s.tls_context() if s.tls != "none" else None
    client: smtplib.SMTP | None = None
    try:
        if s.tls == "smtps":
            client = smtplib.SMTP_SSL(s.host, s.port or 0, timeout=s.timeout, context=context)
        else:
            client = smtplib.SMTP(s.host, s.port or 0, timeout=s.timeout)
            if s.tls == "starttls":
                client.starttls(context=context)   # never falls back to plain: raises if not offered
                client.ehlo()
        if s.login:
            client.login(s.login, s.password)
        return client
    except ssl.SSLCertVerificationError as exc:
        _close(client)
        reason = _VERIFY_REASONS.get(exc.verify_code, f"verification error {exc.verify_code}")
        raise SmtpSecurityError(f"SMTP connection {s.conn_id!r}: the server's TLS certificate was refused "
                                f"({reason}); nothing sent") from None
    except smtplib.SMTPNotSupportedError:
        _close(client)
        raise SmtpSecurityError(f"SMTP connection {s.conn_id!r}: the server does not offer STARTTLS; refusing to "
                                f"send in clear") from None
    except BaseException:
        _close(client)
        raise


def _close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
