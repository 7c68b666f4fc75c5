"""On-call alerts: a real webhook receiver and a real SMTP server on loopback, and no patient data in
either even when the exception quoted a patient's NHS number, name, birth date, postcode and e-mail. The e-mail goes
through the letters' fail-closed SMTP transport (``caldicott.transport.smtp``): plain only to loopback, STARTTLS with
the relay's certificate verified, and a connection the policy refuses is never sent in clear."""

from __future__ import annotations

import json
import socket
from email import message_from_bytes
from email.policy import default as default_policy
from types import SimpleNamespace

from caldicott.redact import scrub
from caldicott_airflow.notifiers import OnCallNotifier, failure_message, send_email

from devtools.airflow_env import free_port
from devtools.peers.mesh import make_tls
from devtools.peers.smtp import SmtpPeer


def _patient_values(synth_source, n: int | None = None) -> list[dict]:
    p = synth_source.result.frames["patient"]
    p = p[p["email"].notna() & p["birth_date"].notna() & p["postcode"].notna()]
    rows = p.head(n) if n else p
    return rows.to_dict("records")


def _leaky_exception(row: dict) -> Exception:
    bd = row["birth_date"]
    nhs = str(row["nhs_number"])
    return ValueError(
        f"could not address letter for {row['given_name']} {row['family_name']} (born {bd:%Y-%m-%d}, "
        f"also written {bd:%d/%m/%Y} and {bd:%-d %B %Y}), {row['address_line']}, {row['postcode']}, "
        f"e-mail {row['email']}, NHS number {nhs} / {nhs[:3]} {nhs[3:6]} {nhs[6:]}; row={row['given_name']!r}")


def _identifiers(row: dict) -> list[str]:
    bd = row["birth_date"]
    nhs = str(row["nhs_number"])
    return [nhs, f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}", row["given_name"], row["family_name"], row["postcode"],
            row["postcode"].replace(" ", ""), row["email"], f"{bd:%Y-%m-%d}", f"{bd:%d/%m/%Y}",
            f"{bd:%-d %B %Y}", row["address_line"]]


def _assert_clean(text: str, row: dict) -> None:
    low = text.lower()
    for value in _identifiers(row):
        assert str(value).lower() not in low, "patient identifier reached an on-call alert"


def _context(exc: Exception) -> dict:
    ti = SimpleNamespace(dag_id="gp_letters", task_id="render_letters", run_id="scheduled__2026-11-02T06:00:00+00:00",
                         try_number=2, max_tries=3, map_index=-1,
                         log_url="http://127.0.0.1:8080/dags/gp_letters/runs/x/tasks/render_letters?try_number=2")
    return {"ti": ti, "task_instance": ti, "exception": exc}


def test_scrub_removes_every_synthetic_patients_identifiers(synth_source):
    rows = _patient_values(synth_source)
    assert len(rows) > 100
    for row in rows:
        _assert_clean(scrub(str(_leaky_exception(row)), limit=10_000), row)


def test_webhook_alert_carries_the_failure_and_no_patient_data(synth_source, webhook, monkeypatch):
    monkeypatch.delenv("CALDICOTT_ONCALL_EMAIL", raising=False)
    monkeypatch.setenv("CALDICOTT_ONCALL_WEBHOOK_TOKEN", "test-token")
    row = _patient_values(synth_source, 1)[0]
    exc = _leaky_exception(row)
    OnCallNotifier(webhook_url=webhook.url).notify(_context(exc))

    assert len(webhook.received) == 1
    got = webhook.received[0]
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["headers"]["Authorization"] == "Bearer test-token"
    raw = got["body"].decode()
    msg = json.loads(raw)
    assert msg["dag_id"] == "gp_letters" and msg["task_id"] == "render_letters"
    assert msg["run_id"].startswith("scheduled__") and msg["try_number"] == 2
    assert msg["log_url"].startswith("http://127.0.0.1:8080/dags/gp_letters/")
    assert msg["error_class"] == "ValueError"
    assert msg["error"].startswith("could not address letter for")
    _assert_clean(raw, row)


def test_email_alert_over_loopback_smtp_has_no_patient_data(synth_source, smtp_server, monkeypatch):
    monkeypatch.delenv("CALDICOTT_ONCALL_WEBHOOK", raising=False)
    row = _patient_values(synth_source, 2)[1]
    OnCallNotifier(email="oncall@example.org", smtp_conn_id="oncall_smtp_test").notify(
        _context(_leaky_exception(row)))

    assert len(smtp_server.messages) == 1
    env = smtp_server.messages[0]
    assert env.rcpt_tos == ["oncall@example.org"]
    assert env.mail_from == "caldicott-alerts@example.org"
    mail = message_from_bytes(env.content, policy=default_policy)
    assert mail["Subject"] == "[caldicott] task failed: gp_letters.render_letters (try 2)"
    body = "".join(part.get_content() for part in mail.walk() if part.get_content_maintype() == "text")
    assert "ValueError" in body and "render_letters" in body and "try_number=2" in body
    _assert_clean(env.content.decode(errors="replace"), row)
    _assert_clean(body, row)


def test_alerting_never_raises_when_channels_are_down(monkeypatch, caplog):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_SMTP", json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                                                              "extra": {"disable_ssl": True, "disable_tls": True,
                                                                        "from_email": "a@example.org",
                                                                        "retry_limit": 0, "timeout": 2}}))
    OnCallNotifier(webhook_url=f"http://127.0.0.1:{port}/", email="x@example.org", smtp_conn_id="dead_smtp").notify(
        _context(RuntimeError("boom")))
    assert "on-call webhook failed" in caplog.text and "on-call e-mail failed" in caplog.text


def test_failure_message_without_exception():
    msg = failure_message({"ti": SimpleNamespace(dag_id="d", task_id="t", run_id="r", try_number=1)})
    assert msg["error"] is None and msg["error_class"] is None and msg["dag_id"] == "d"


ALERT = {"kind": "task_failed", "dag_id": "gp_letters", "task_id": "send_batch", "try_number": 1, "error": "boom"}


def test_email_alert_refuses_plain_smtp_to_a_remote_relay_without_touching_the_network(monkeypatch, caplog):
    def touched(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "create_connection", touched)
    monkeypatch.setattr(socket, "getaddrinfo", touched)
    monkeypatch.setenv("AIRFLOW_CONN_ONCALL_PLAIN_REMOTE", json.dumps({
        "conn_type": "smtp", "host": "relay.trust.nhs.example", "port": 25,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "caldicott-alerts@example.org"}}))
    assert send_email("oncall@example.org", ALERT, "oncall_plain_remote") is False
    assert "on-call e-mail failed: SmtpSecurityError" in caplog.text


def test_email_alert_over_starttls_is_sent_only_to_a_verified_relay(tmp_path, monkeypatch, caplog):
    with SmtpPeer(tmp_path / "smtp", tls="starttls") as relay:
        monkeypatch.setenv("AIRFLOW_CONN_ONCALL_STARTTLS", json.dumps(relay.connection()))
        assert send_email("oncall@example.org", ALERT, "oncall_starttls") is True
        (mail,) = relay.messages()
        assert mail["Subject"] == "[caldicott] task failed: gp_letters.send_batch (try 1)"
        assert mail["To"] == "oncall@example.org"
        other_ca = make_tls(tmp_path / "other-ca")["ca"]          # a CA that did not sign the relay's certificate
        monkeypatch.setenv("AIRFLOW_CONN_ONCALL_WRONG_CA", json.dumps(relay.connection(ca_file=other_ca)))
        assert send_email("oncall@example.org", ALERT, "oncall_wrong_ca") is False
        monkeypatch.setenv("AIRFLOW_CONN_ONCALL_NO_VERIFY", json.dumps(relay.connection(ssl_context="none")))
        assert send_email("oncall@example.org", ALERT, "oncall_no_verify") is False
        assert len(relay.messages()) == 1, "an alert went to a relay that was not verified"
    assert caplog.text.count("on-call e-mail failed: SmtpSecurityError") == 2

