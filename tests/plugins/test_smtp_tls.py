"""SMTP transport security fails closed (issue 14): ``caldicott_airflow.smtp.smtp_sender`` from an Airflow connection.

Plain SMTP to anything but loopback is refused before a socket is opened, with an error naming the connection
and not the host; plain SMTP to the real aiosmtpd stand-in on 127.0.0.1 (what the demo and e2e use) works;
STARTTLS and SMTPS work against aiosmtpd with TLS when the connection's ``ca_file`` names the CA that signed the
server's certificate, and are refused when it does not (or when the system CAs are asked instead), as is a
server that does not offer STARTTLS and any attempt to switch verification off.
"""

from __future__ import annotations

import json
import socket

import pytest
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound
from caldicott.transport.smtp import SmtpSecurityError, SmtpSettings, is_loopback
from caldicott_airflow.smtp import smtp_sender

from devtools.peers.mesh import make_tls
from devtools.peers.smtp import FROM_ADDR, SmtpPeer

CONN = "caldicott_smtp_under_test"
REMOTE = "relay.trust.nhs.example"


def _use(monkeypatch, conn: dict) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(conn))


def _item(n: int) -> Outbound:
    return Outbound(f"gp_letters-tls-{n}", Purpose.PATIENT_COPY, "P1", "secure-email",
                    f"Subject: [secure] x\r\nMessage-ID: <gp_letters-tls-{n}@caldicott.invalid>\r\n\r\nhi\r\n".encode(),
                    Protection.SECURE_GATEWAY, address="p@patients.example")


def _send_one(n: int = 1) -> str:
    with smtp_sender(CONN) as sender:
        assert sender.from_addr == FROM_ADDR
        return sender.send(_item(n))


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a socket or resolves a name."""
    def touched(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "create_connection", touched)
    monkeypatch.setattr(socket, "getaddrinfo", touched)
    monkeypatch.setattr(socket.socket, "connect", touched)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost.", " localhost "])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", [REMOTE, "10.0.0.25", "192.0.2.10", "0.0.0.0", "::", "localhost.example.org",
                                  "127.0.0.1.nip.io", "::ffff:10.0.0.1", ""])
def test_everything_else_is_remote(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("host", [REMOTE, "192.0.2.10"])
@pytest.mark.parametrize("flags", [{"disable_ssl": True, "disable_tls": True},
                                   {"disable_ssl": "true", "disable_tls": "yes"}])
def test_plain_smtp_to_a_remote_host_is_refused_before_any_connection(monkeypatch, no_network, host, flags):
    _use(monkeypatch, {"conn_type": "smtp", "host": host, "port": 25, "login": "svc", "password": "pw",
                       "extra": {**flags, "from_email": FROM_ADDR}})
    with pytest.raises(SmtpSecurityError) as refused:
        _send_one()
    message = str(refused.value)
    assert repr(CONN) in message and "neither implicit TLS (SMTPS) nor STARTTLS" in message
    assert host not in message and "192.0.2" not in message          # names the connection, not the address


@pytest.mark.parametrize("extra", [{"ssl_context": "none"}, {"disable_ssl": True, "ssl_context": "none"},
                                   {"disable_ssl": True, "disable_tls": "maybe"}])
def test_verification_cannot_be_switched_off_nor_a_flag_guessed(monkeypatch, no_network, extra):
    _use(monkeypatch, {"conn_type": "smtp", "host": REMOTE, "port": 587, "extra": {**extra, "from_email": FROM_ADDR}})
    with pytest.raises(SmtpSecurityError, match=repr(CONN)):
        _send_one()


def test_defaults_are_smtps_with_verification():
    s = SmtpSettings.from_connection(CONN, host=REMOTE, port=None, extra={})
    assert s.tls == "smtps" and s.ca_file is None
    context = s.tls_context()
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    assert SmtpSettings.from_connection(CONN, host=REMOTE, port=587, extra={"disable_ssl": True}).tls == "starttls"
    assert SmtpSettings.from_connection(CONN, host="127.0.0.1", port=25,
                                        extra={"disable_ssl": True, "disable_tls": True}).tls == "none"


def test_a_connection_without_a_sender_address_is_refused(monkeypatch, tmp_path):
    with SmtpPeer(tmp_path / "smtp") as peer:
        conn = peer.connection()
        del conn["extra"]["from_email"]
        _use(monkeypatch, conn)
        with pytest.raises(ValueError, match="from_email"):
            _send_one()
        assert peer.files() == []


def test_plain_smtp_to_the_loopback_relay_delivers(monkeypatch, tmp_path):
    """The demo's and the e2e session's connection: aiosmtpd on 127.0.0.1, no TLS (the one exception)."""
    with SmtpPeer(tmp_path / "smtp") as peer:
        _use(monkeypatch, peer.connection())
        assert _send_one() == "<gp_letters-tls-1@caldicott.invalid>"
        (msg,) = peer.messages()
    assert msg["Message-ID"] == "<gp_letters-tls-1@caldicott.invalid>" and msg["X-Envelope-To"] == "p@patients.example"


@pytest.mark.parametrize("tls", ["starttls", "smtps"])
def test_tls_with_the_ca_from_the_extras_delivers(monkeypatch, tmp_path, tls):
    """aiosmtpd requires STARTTLS before MAIL (or speaks TLS from the first byte): a delivery proves TLS was used,
    with the server's certificate checked against the connection's ``ca_file`` and its host name."""
    with SmtpPeer(tmp_path / "smtp", tls=tls) as peer:
        _use(monkeypatch, peer.connection())
        _send_one()
        (msg,) = peer.messages()
    assert msg["Message-ID"] == "<gp_letters-tls-1@caldicott.invalid>"


@pytest.mark.parametrize("tls", ["starttls", "smtps"])
@pytest.mark.parametrize("trust", ["another_ca", "system_cas"])
def test_an_untrusted_server_certificate_is_refused(monkeypatch, tmp_path, tls, trust):
    other_ca = make_tls(tmp_path / "other")["ca"] if trust == "another_ca" else None
    with SmtpPeer(tmp_path / "smtp", tls=tls) as peer:
        _use(monkeypatch, peer.connection(ca_file=other_ca))
        with pytest.raises(SmtpSecurityError, match="certificate was refused") as refused:
            _send_one()
        assert peer.files() == []
    assert repr(CONN) in str(refused.value) and "127.0.0.1" not in str(refused.value)


def test_a_server_that_does_not_offer_starttls_gets_nothing_in_clear(monkeypatch, tmp_path):
    with SmtpPeer(tmp_path / "smtp") as peer:   # a plain server, asked for STARTTLS
        _use(monkeypatch, peer.connection(disable_tls=False, ca_file=make_tls(tmp_path / "ca")["ca"]))
        with pytest.raises(SmtpSecurityError, match="does not offer STARTTLS"):
            _send_one()
        assert peer.files() == []


def test_an_unreadable_ca_file_is_refused(monkeypatch, tmp_path, no_network):
    extra = {"disable_ssl": True, "ca_file": str(tmp_path / "missing.pem"), "from_email": FROM_ADDR}
    _use(monkeypatch, {"conn_type": "smtp", "host": REMOTE, "port": 587, "extra": extra})
    with pytest.raises(SmtpSecurityError, match="ca_file"):
        _send_one()
