"""A real SMTP server on 127.0.0.1 (aiosmtpd, in a thread) that stores every message it accepts.

Stands in for the provider's NHSmail relay in the demo and the tests. Each accepted message is written,
maildir-style (``tmp/`` then rename into ``new/``), to ``<workdir>/smtp/new/<seq>.eml`` with the envelope
recipients in a header, so a test can count deliveries exactly (duplicates are kept, not merged) and
decrypt what a GP practice or a patient would receive. No auth.

By default plain SMTP, as the demo and the e2e session use it: allowed by the SMTP sender's policy only because
the relay is on loopback (:mod:`caldicott.transport.smtp`). ``tls="starttls"`` (STARTTLS required) or
``tls="smtps"`` (implicit TLS) serve a certificate for 127.0.0.1 from a throw-away CA
(:func:`devtools.peers.mesh.make_tls`), whose file the connection's ``ca_file`` extra names: the TLS tests.

``start_for_demo(workdir)`` starts one for the demo / e2e session; ``airflow_env()`` gives the
``AIRFLOW_CONN_CALDICOTT_SMTP`` connection (``disable_ssl`` / ``disable_tls`` extras as Airflow's SMTP
provider spells them).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import json
import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Literal

from aiosmtpd.controller import Controller

from devtools.airflow_env import free_port
from devtools.peers.mesh import make_tls

# aiosmtpd logs every connection at INFO under 'mail.log': noise in the demo's summary, not news
logging.getLogger("mail.log").setLevel(logging.WARNING)

CONN_ID = "caldicott_smtp"
FROM_ADDR = "letters@talkingtherapies.nhs.example"


class _Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        existing = [int(p.stem) for p in (root / "new").glob("*.eml") if p.stem.isdigit()]
        self._seq = itertools.count(max(existing, default=0) + 1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            n = next(self._seq)
        head = f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\nX-Envelope-From: {envelope.mail_from}\r\n"
        data = head.encode() + envelope.original_content
        tmp = self.root / "tmp" / f"{n:08d}.eml"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / "new" / f"{n:08d}.eml")
        return "250 Message accepted for delivery"


class SmtpPeer:
    """``with SmtpPeer(folder) as smtp: ...``; ``messages()`` lists what arrived."""

    name = "smtp"

    def __init__(self, root: Path, port: int | None = None, *,
                 tls: Literal["starttls", "smtps"] | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.store = _Store(self.root)
        self.tls = tls
        self.tls_files: dict[str, str] = {}
        kw: dict = {}
        if tls is not None:
            self.tls_files = make_tls(self.root / "tls")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls_files["server"], self.tls_files["server_key"])
            kw = {"ssl_context": context} if tls == "smtps" else {"tls_context": context, "require_starttls": True}
        self.controller = Controller(self.store, hostname="127.0.0.1", port=self.port,
                                     data_size_limit=50 * 1024 * 1024, **kw)

    def start(self) -> SmtpPeer:
        self.controller.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, RuntimeError):
            self.controller.stop()

    def __enter__(self) -> SmtpPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self) -> list[Path]:
        return sorted((self.root / "new").glob("*.eml"))

    def messages(self) -> list[email.message.Message]:
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in self.files()]

    def raw(self) -> list[bytes]:
        return [p.read_bytes() for p in self.files()]

    def connection(self, **extra) -> dict:
        """The Airflow connection to this server (``extra`` overrides extras, e.g. another ``ca_file``)."""
        security = {None: {"disable_ssl": True, "disable_tls": True},
                    "starttls": {"disable_ssl": True, "disable_tls": False, "ca_file": self.tls_files.get("ca")},
                    "smtps": {"disable_ssl": False, "ca_file": self.tls_files.get("ca")}}[self.tls]
        return {"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                "extra": {**security, "from_email": FROM_ADDR, "timeout": 30, "retry_limit": 2, **extra}}

    def airflow_env(self) -> dict[str, str]:
        return {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(self.connection())}


def start_for_demo(workdir: Path) -> SmtpPeer:
    return SmtpPeer(Path(workdir) / "smtp").start()
