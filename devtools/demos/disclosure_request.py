"""Demo: two non-routine disclosures held for a service manager. A court order is approved by manager1
(over the REST API, as the UI's Required Actions form would) and released encrypted to the outbox with a
letter to the patient; a police request without an order is refused by manager2 with a refusal letter.

The requester's key stays with the synthetic peers (``peer-keys/disclosure-requester.key``) so the package
can be opened the way the court would: ``openssl cms -decrypt -inform DER -in <file>.p7m -inkey <key>``.
Safe to re-run: a request already decided is reported from the register, not asked again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import time
from pathlib import Path

from caldicott.crypto.keys import cached_identity
from caldicott.db import make_engine, sqlite_url
from caldicott.disclosure import register
from caldicott.disclosure.request import DisclosureRequest
from caldicott.transport.ledger import item_id

from devtools.paths import ROOT

ORDER = 60
DAG_ID = "disclosure_request"
TASK = "approve_disclosure"


def _conf(ws, reference: str, cert_pem: bytes, **over) -> dict:
    db = sqlite3.connect(ws.records_db)
    try:
        pid, first, last = db.execute(
            "SELECT r.local_patient_id, MIN(c.contact_at), MAX(c.contact_at) FROM referral r "
            "JOIN care_contact c ON c.service_request_id = r.service_request_id "
            "GROUP BY r.local_patient_id ORDER BY COUNT(*) DESC, r.local_patient_id LIMIT 1").fetchone()
    finally:
        db.close()
    conf = {"request_type": "court_order", "reference": reference, "requester_organisation": "Oxford Crown Court",
            "requester_org_code": "CROWN-OX", "requester_person": "Clerk to the court",
            "authority_check": "sealed order received by post; court office telephoned on its published number",
            "purpose": "criminal proceedings", "necessity": "the order specifies attendance records",
            "legal_basis": "court_order", "local_patient_id": pid, "categories": ["demographics", "appointments"],
            "date_from": first[:10], "date_to": last[:10], "urgency": "routine", "consent_status": "not_sought",
            "country": "GB", "recipient_certificate_pem": cert_pem.decode(), "approval_timeout_minutes": 60}
    conf.update(over)
    return conf


def _wait_awaiting(stack, run_id: str, timeout: float = 300) -> None:
    with contextlib.suppress(TimeoutError):   # the run ended (or never got there): the summary reports its state
        stack.wait_task_state(DAG_ID, run_id, TASK, "awaiting_input", timeout)


def _answer(stack, run_id: str, user: str, option: str, **form) -> int:
    params = {"reasons": "", "legal_basis_confirmed": False, "tell_patient": True, "not_told_reason": "n/a",
              "consulted": ""}
    params.update(form)
    status, _ = stack.answer(DAG_ID, run_id, TASK, option, params, user=user)
    return status


def run(ctx) -> dict:
    ws, stack = ctx.workspace, ctx.stack
    ident = cached_identity(ws.keys_dir, "disclosure-requester")
    state = make_engine(sqlite_url(ws.state_db))
    cases = {
        "approved": (_conf(ws, "DEMO-T20267001", ident.cert_pem), "manager1", "Approve",
                     {"reasons": "sealed court order; disclosure limited to what it specifies",
                      "legal_basis_confirmed": True, "consulted": "Caldicott Guardian"}),
        "refused": (_conf(ws, "DEMO-TVP-55102", ident.cert_pem, request_type="police",
                          requester_organisation="Thames Valley Police", requester_org_code="TVP",
                          requester_person="DC Example", legal_basis="crime_prevention",
                          purpose="enquiry about a minor theft", necessity="to confirm whereabouts",
                          authority_check="e-mail from a police.uk address; no DPA form signed by an inspector"),
                    "manager2", "Refuse",
                    {"reasons": "not a serious crime and no court order: the public interest does not outweigh "
                                "the duty of confidence", "consulted": "Caldicott Guardian"}),
    }
    runs: dict[str, str] = {}
    for name, (conf, *_rest) in cases.items():
        did = DisclosureRequest.from_conf(conf).disclosure_id
        if register.decision(state, did) is None:
            runs[name] = stack.trigger(DAG_ID, dt.datetime.now(dt.UTC), conf)
            time.sleep(1)  # distinct logical dates
    for name, run_id in runs.items():
        _wait_awaiting(stack, run_id)
        _, user, option, form = cases[name]
        _answer(stack, run_id, user, option, **form)
    states = {name: stack.wait_run(DAG_ID, run_id, timeout=600) for name, run_id in runs.items()}
    out: dict = {"state": "success" if all(s == "success" for s in states.values()) else "failed",
                 "runs": states or "already decided (register)"}
    for name, (conf, user, option, _form) in cases.items():
        did = DisclosureRequest.from_conf(conf).disclosure_id
        out[name] = {"disclosure_id": did, "request_type": conf["request_type"], "reference": conf["reference"],
                     "requester": conf["requester_organisation"], "categories": conf["categories"],
                     "answered_by": user, "answer": option, "status": register.status(state, did),
                     **_outcome(ws, did)}
    ok = out["approved"]["status"] == "released" and out["refused"]["status"] == "refused"
    out["state"] = out["state"] if ok else "failed"
    out["report"] = ".venv/bin/python -m caldicott.disclosure.report --url " + _url(ws.state_db)
    return out


def _url(db: Path) -> str:
    """The database's URL as a person types it in the checkout (relative), else absolute (a test's workspace)."""
    return f"sqlite:///{db.relative_to(ROOT)}" if db.is_relative_to(ROOT) else sqlite_url(db)


def _outcome(ws, did: str) -> dict:
    """Where the released package went (the ledger's channel and transport reference: for the outbox, the file) and
    which letters were written (paths under the outputs folder)."""
    db = sqlite3.connect(ws.state_db)
    try:
        row = db.execute("SELECT channel, state, transport_ref FROM delivery_ledger WHERE item_id = ?",
                         (item_id("disclosure", did),)).fetchone()
    finally:
        db.close()
    letters = sorted(str(p.relative_to(ws.outputs)) for p in (ws.outputs / "disclosures" / did).glob("*.txt"))
    return {"release": {"channel": row[0], "state": row[1], "transport_ref": row[2]} if row else None,
            "letters": letters}
