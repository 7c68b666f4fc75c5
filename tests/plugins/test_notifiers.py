"""On-call alerts: a real webhook receiver and a real SMTP server on loopback, and no patient data in
either even when the exception quoted a patient's NHS number, name, birth date, postcode and e-mail."""

from __future__ import annotations

import json
from email import message_from_bytes
from email.policy import default as default_policy
from types import SimpleNamespace

from caldicott.redact import scrub
from caldicott_airflow.notifiers import OnCallNotifier, failure_message

from devtools.airflow_env import free_port


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


def test_email_alert_through_the_smtp_provider_has_no_patient_data(synth_source, smtp_server, monkeypatch):
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
