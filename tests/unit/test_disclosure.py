"""Disclosures: minimum-necessary packages per request type, de-identification, the national data opt-out,
the register's decisions, and the release gateway refusing non-routine transfers without an approval."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from dataclasses import replace

import pandas as pd
import pytest
from caldicott import gateway
from caldicott.crypto.cms import decrypt_file
from caldicott.crypto.keys import make_identity
from caldicott.disclosure import flow, register
from caldicott.disclosure.outbox import OutboxSender
from caldicott.disclosure.package import PackageError, build_package, pseudonym
from caldicott.disclosure.request import DisclosureRequest, RequestInvalid
from caldicott.policy.disclosure import POLICIES, Category
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound
from caldicott.transport.ledger import Intent, Ledger, State

KEY = b"k" * 32
APPROVERS = ["manager1", "manager2"]


@pytest.fixture(scope="module")
def requester():
    return make_identity("Requester Test")


def _patient_with_history(synth_source) -> tuple[str, dt.date, dt.date]:
    f = synth_source.result.frames
    cc = f["care_contact"].merge(f["referral"][["service_request_id", "local_patient_id"]], on="service_request_id")
    counts = cc.groupby("local_patient_id").size().sort_values(ascending=False)
    pid = counts.index[0]
    dates = pd.to_datetime(cc[cc.local_patient_id == pid]["contact_at"])
    return pid, dates.min().date() - dt.timedelta(days=60), dates.max().date() + dt.timedelta(days=1)


def _conf(cert: bytes, **over) -> dict:
    conf = {"request_type": "police", "reference": "TVP/2026/0142", "requester_organisation": "Thames Valley Police",
            "requester_person": "DC Example", "authority_check": "warrant card checked; called back via switchboard",
            "purpose": "investigation of a serious assault", "necessity": "to establish attendance on a date",
            "legal_basis": "crime_prevention", "categories": ["demographics", "appointments", "clinical_notes"],
            "date_from": "2020-01-01", "date_to": "2026-12-31", "urgency": "urgent", "consent_status": "not_sought",
            "local_patient_id": "", "country": "GB", "recipient_certificate_pem": cert.decode()}
    conf.update(over)
    return conf


def _files(pkg) -> dict[str, pd.DataFrame]:
    return {k: pd.read_csv(io.BytesIO(v), dtype=str) for k, v in pkg.files.items()}


def test_request_validation_names_fields_not_values(requester):
    with pytest.raises(RequestInvalid, match="legal_basis"):
        DisclosureRequest.from_conf(_conf(requester.cert_pem, legal_basis="research_s251", local_patient_id="P1"))
    with pytest.raises(RequestInvalid, match="local_patient_id"):
        DisclosureRequest.from_conf(_conf(requester.cert_pem))
    with pytest.raises(RequestInvalid, match="cohort"):
        DisclosureRequest.from_conf(_conf(requester.cert_pem, request_type="research", legal_basis="research_s251",
                                          local_patient_id="P1"))
    with pytest.raises(RequestInvalid) as exc:
        DisclosureRequest.from_conf(_conf(requester.cert_pem, local_patient_id="P1", date_from="1 March 2026"))
    assert "1 March" not in str(exc.value)


def test_police_package_is_minimum_necessary(synth_source, requester):
    pid, d_from, d_to = _patient_with_history(synth_source)
    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, local_patient_id=pid, date_from=str(d_from),
                                            date_to=str(d_to)))
    pkg = build_package(synth_source.engine, req)
    # session notes were asked for but a police request without an order may not have them
    assert pkg.categories == ["demographics", "appointments"]
    assert "clinical_notes" in pkg.withheld
    files = _files(pkg)
    assert set(files) == {"demographics.csv", "appointments.csv"}
    assert list(files["appointments.csv"].columns) == [
        "care_contact_id", "service_request_id", "contact_at", "duration_minutes", "app_type", "attend_code",
        "cons_mechanism"]
    assert "clinical_summary" not in b"".join(pkg.files.values()).decode()
    assert files["demographics.csv"]["local_patient_id"].tolist() == [pid]
    assert pkg.counts["appointments"] > 0
    # only this patient's contacts, only in the date range
    f = synth_source.result.frames
    refs = set(f["referral"].query("local_patient_id == @pid")["service_request_id"])
    assert set(files["appointments.csv"]["service_request_id"]) <= refs
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(pkg.to_zip())).read("manifest.json"))
    assert manifest["categories"] == ["demographics", "appointments"] and manifest["rules_applied"]
    assert pkg.to_zip() == pkg.to_zip()  # deterministic


def test_date_range_limits_rows(synth_source, requester):
    pid, d_from, d_to = _patient_with_history(synth_source)
    full = build_package(synth_source.engine, DisclosureRequest.from_conf(_conf(
        requester.cert_pem, request_type="court_order", legal_basis="court_order", local_patient_id=pid,
        categories=["appointments", "clinical_notes", "outcome_scores"], date_from=str(d_from), date_to=str(d_to))))
    assert full.categories == ["appointments", "outcome_scores", "clinical_notes"] and not full.withheld
    mid = d_from + (d_to - d_from) / 2
    part = build_package(synth_source.engine, DisclosureRequest.from_conf(_conf(
        requester.cert_pem, request_type="court_order", legal_basis="court_order", local_patient_id=pid,
        categories=["appointments"], date_from=str(d_from), date_to=str(mid))))
    assert 0 < part.counts["appointments"] < full.counts["appointments"]
    dates = pd.to_datetime(_files(part)["appointments.csv"]["contact_at"])
    assert dates.max().date() <= mid


@pytest.mark.parametrize("rtype", sorted(POLICIES))
def test_every_type_includes_only_allowed_categories(synth_source, requester, rtype):
    pol = POLICIES[rtype]
    pid, d_from, d_to = _patient_with_history(synth_source)
    conf = _conf(requester.cert_pem, request_type=rtype, legal_basis=sorted(pol.legal_bases)[0].value,
                 categories=[c.value for c in Category], date_from=str(d_from), date_to=str(d_to),
                 local_patient_id=pid if pol.needs_patient else "",
                 consent_status="given")
    pkg = build_package(synth_source.engine, DisclosureRequest.from_conf(conf), opted_out=set(), pseudonym_key=KEY)
    assert set(pkg.categories) == {c.value for c in pol.allowed}
    assert set(pkg.withheld) == {c.value for c in Category} - {c.value for c in pol.allowed}


def test_research_extract_is_deidentified_and_opt_outs_filtered(synth_source, requester):
    f = synth_source.result.frames
    req = DisclosureRequest.from_conf(_conf(
        requester.cert_pem, request_type="research", legal_basis="research_deidentified",
        categories=["demographics", "referrals", "appointments", "outcome_scores", "clinical_notes"],
        date_from="2024-01-01", date_to="2024-12-31"))
    refs = f["referral"][(pd.to_datetime(f["referral"].received_date) >= "2024-01-01")
                         & (pd.to_datetime(f["referral"].received_date) <= "2024-12-31")]
    cohort = f["patient"][f["patient"].local_patient_id.isin(refs.local_patient_id)]
    numbers = sorted(n for n in cohort.nhs_number.dropna() if len(n) == 10)
    opted = set(numbers[:5])
    asked: list[list[str]] = []

    def ndop(nums: list[str]) -> set[str]:  # the shape of issue 5's NDOP check
        asked.append(nums)
        return opted & set(nums)

    pkg = build_package(synth_source.engine, req, opted_out=ndop, pseudonym_key=KEY)
    assert "clinical_notes" in pkg.withheld
    assert pkg.ndop["opted_out"] == 5 and pkg.ndop["included_patients"] < pkg.ndop["cohort_patients"]
    blob = b"\n".join(pkg.files.values()).decode()
    for _, p in cohort.iterrows():  # no identifier of any cohort patient appears anywhere
        for v in (p.nhs_number, p.family_name, p.postcode, p.local_patient_id, str(p.birth_date)):
            if isinstance(v, str) and len(v) > 3:
                assert v not in blob
    demo = _files(pkg)["demographics.csv"]
    assert set(demo.columns) == {"pseudo_patient_id", "age_band_at_referral", "gender", "ethnic_category"}
    opted_ids = set(cohort[cohort.nhs_number.isin(opted)].local_patient_id)
    assert not {pseudonym(KEY, "patient", i) for i in opted_ids} & set(demo.pseudo_patient_id)
    assert len(demo) == pkg.ndop["included_patients"]
    # same key, same pseudonyms; another key, others
    again = build_package(synth_source.engine, req, opted_out=opted, pseudonym_key=KEY)
    assert again.files == pkg.files
    other = build_package(synth_source.engine, req, opted_out=opted, pseudonym_key=b"z" * 32)
    assert other.files["demographics.csv"] != pkg.files["demographics.csv"]
    # months, never dates
    assert _files(pkg)["referrals.csv"]["received_month"].str.fullmatch(r"\d{4}-\d{2}").all()


def test_research_extract_needs_opt_outs_and_key(synth_source, requester):
    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, request_type="research",
                                            legal_basis="research_s251", categories=["referrals"],
                                            date_from="2024-01-01", date_to="2024-03-31"))
    with pytest.raises(PackageError, match="opt-out"):
        build_package(synth_source.engine, req, pseudonym_key=KEY)
    with pytest.raises(PackageError, match="key"):
        build_package(synth_source.engine, req, opted_out=set(), pseudonym_key=None)


# ---- the gateway and the register ----------------------------------------------------------------------
def _item(did: str, payload: bytes, recipient: str = "police:tvp") -> Outbound:
    return Outbound(item_id=f"disclosure-{did}", purpose=Purpose.DISCLOSURE, recipient=recipient, channel="outbox",
                    payload=payload, protection=Protection.CMS, disclosure_id=did)


def test_gateway_refuses_disclosure_without_matching_approval(state_engine, tmp_path):
    sender = OutboxSender(tmp_path / "outbox")
    did = "dsc-test"
    ledger = Ledger(state_engine)
    for suffix in ("a", "b", "c", "d"):
        ledger.record_intent([Intent(f"disclosure-{did}{suffix}", "disclosure_request", "disclosure", "r",
                                     "police:tvp", "outbox")])
    # no register entry at all
    rep = gateway.release([_item(did + "a", b"package")], sender, state_engine)
    assert rep.sent == [] and "approved disclosure register entry" in rep.refused[f"disclosure-{did}a"]
    # requested but not yet decided
    register.append(state_engine, did + "b", "requested", "caldicott", {})
    rep = gateway.release([_item(did + "b", b"package")], sender, state_engine)
    assert rep.sent == [] and rep.refused
    # approved, but for other bytes / another recipient
    import hashlib
    register.append(state_engine, did + "c", "approved", "manager1",
                    {"recipient": "police:tvp", "package_checksum": hashlib.sha256(b"package").hexdigest()})
    rep = gateway.release([_item(did + "c", b"package, altered")], sender, state_engine)
    assert "differs from the one approved" in rep.refused[f"disclosure-{did}c"]
    rep = gateway.release([_item(did + "c", b"package", recipient="solicitor:x")], sender, state_engine)
    assert "recipient differs" in rep.refused[f"disclosure-{did}c"]
    # approved for one mailbox: the same bytes to another address are refused (the approver saw the address)
    register.append(state_engine, did + "c", "approved", "manager1",
                    {"recipient": "police:tvp", "package_checksum": hashlib.sha256(b"package").hexdigest(),
                     "recipient_address": "disclosures@tvp.police.example"})
    rep = gateway.release([replace(_item(did + "c", b"package"), address="someone@elsewhere.example")], sender,
                          state_engine)
    assert "address differs" in rep.refused[f"disclosure-{did}c"]
    assert ledger.get(f"disclosure-{did}c").state == State.HELD
    # refused after approval: the latest decision wins
    register.append(state_engine, did + "d", "approved", "manager1",
                    {"recipient": "police:tvp", "package_checksum": hashlib.sha256(b"package").hexdigest()})
    register.append(state_engine, did + "d", "refused", "manager2", {"reasons": "order withdrawn"})
    rep = gateway.release([_item(did + "d", b"package")], sender, state_engine)
    assert rep.sent == [] and rep.refused
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").rglob("*.p7m"))


def test_whole_flow_approve_release_notify(synth_source, state_engine, requester, tmp_path):
    pid, d_from, d_to = _patient_with_history(synth_source)
    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, request_type="safeguarding",
                                            legal_basis="safeguarding", local_patient_id=pid,
                                            categories=["demographics", "appointments", "outcome_scores"],
                                            date_from=str(d_from), date_to=str(d_to)))
    did = flow.record_request(state_engine, req, "clerk1")
    summary = flow.make_package(synth_source.engine, state_engine, req)
    assert summary["categories"] == ["demographics", "appointments"] and summary["withheld"] == ["outcome_scores"]
    assert flow.make_package(synth_source.engine, state_engine, req)["package_checksum"] == summary["package_checksum"]
    subject, body = flow.approval_text(state_engine, did, 60, approvers=APPROVERS, endpoint={"folder": "/out"})
    patient = synth_source.result.frames["patient"].set_index("local_patient_id").loc[pid]
    for v in (pid, patient.nhs_number, patient.family_name, patient.postcode):
        assert v not in subject + body
    # incomplete approval: nothing released, still open
    with pytest.raises(flow.DecisionIncomplete):
        flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": {
            "reasons": "", "legal_basis_confirmed": False},
            "responded_by_user": {"id": "manager1", "name": "manager1"}}, approvers=APPROVERS)
    assert register.status(state_engine, did) == "open"
    out = flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": {
        "reasons": "child at risk; necessary and proportionate", "legal_basis_confirmed": True, "tell_patient": True,
        "not_told_reason": "n/a", "consulted": "Caldicott Guardian"},
        "responded_by_user": {"id": "manager1", "name": "manager1"}}, approvers=APPROVERS)
    assert out["outcome"] == "approved"
    sender = OutboxSender(tmp_path / "outbox")
    res = flow.release(state_engine, req, sender, did)
    assert res["released"] and res["sent"] == 1
    assert flow.release(state_engine, req, sender, did)["already_sent"] == 1  # exactly once
    sent = next((tmp_path / "outbox").rglob("*.p7m")).read_bytes()
    plain = decrypt_file(sent, requester.cert_pem, requester.key_pem)
    assert set(zipfile.ZipFile(io.BytesIO(plain)).namelist()) == {"manifest.json", "demographics.csv",
                                                                   "appointments.csv"}
    letter = flow.notify_patient(synth_source.engine, state_engine, req, tmp_path / "out",
                                 service="Synthetic Talking Therapies")
    assert letter["letter"] and patient.family_name in (tmp_path / "out" / letter["letter"]).read_text()
    assert register.status(state_engine, did) == "released"
    with pytest.raises(flow.AlreadyDecided):
        flow.record_request(state_engine, req, "clerk1")
    [row] = register.requests(state_engine)
    assert row["status"] == "released" and row["decided_by"] == "manager1" and row["patient_told"] is True


def test_refusal_and_timeout(synth_source, state_engine, requester, tmp_path):
    pid, d_from, d_to = _patient_with_history(synth_source)
    for ref, response in (("R1", {"chosen_options": ["Refuse"], "params_input": {"reasons": "no legal basis"},
                                  "responded_by_user": {"id": "manager2", "name": "manager2"}}),
                          ("R2", {"timed_out": True, "timeout_minutes": 1})):
        req = DisclosureRequest.from_conf(_conf(requester.cert_pem, reference=ref, local_patient_id=pid,
                                                date_from=str(d_from), date_to=str(d_to)))
        flow.record_request(state_engine, req, "admin")
        summary = flow.make_package(synth_source.engine, state_engine, req)
        assert flow.record_decision(state_engine, summary, response, approvers=APPROVERS)["outcome"] == "refused"
        assert flow.release(state_engine, req, OutboxSender(tmp_path / "o"), "k")["released"] is False
        letter = flow.write_refusal(state_engine, req, tmp_path / "out", service="Synthetic TT")["letter"]
        text = (tmp_path / "out" / letter).read_text()
        assert ref in text and pid not in text
    rows = {r["reference"]: r for r in register.requests(state_engine)}
    assert rows["R1"]["status"] == "refused" and not rows["R1"]["escalated"]
    assert rows["R2"]["status"] == "refused" and rows["R2"]["escalated"]


def test_report_lists_open_approved_refused(state_engine, tmp_path):
    import hashlib

    from caldicott.disclosure import report

    register.append(state_engine, "dsc-a", "requested", "api", {"request_type": "police", "reference": "A"})
    register.append(state_engine, "dsc-b", "requested", "api", {"request_type": "dwp", "reference": "B"})
    register.append(state_engine, "dsc-b", "approved", "manager1",
                    {"recipient": "dwp:x", "package_checksum": hashlib.sha256(b"p").hexdigest()})
    register.append(state_engine, "dsc-c", "requested", "api", {"request_type": "solicitor", "reference": "C"})
    register.append(state_engine, "dsc-c", "refused", "manager2", {"reasons": "no consent"})
    statuses = {r["reference"]: r["status"] for r in report.rows(state_engine)}
    assert statuses == {"A": "open", "B": "approved", "C": "refused"}
    assert [r["reference"] for r in report.rows(state_engine, "open")] == ["A"]
    url = str(state_engine.url)
    assert report.main(["--url", url, "--csv", str(tmp_path / "r.csv"), "--html", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.csv").read_text().count("\n") == 4 and "manager2" in (tmp_path / "r.html").read_text()


def test_research_uses_the_ndop_cache_and_refuses_unchecked_numbers(synth_source, state_engine, requester):
    from caldicott.db import utcnow
    from caldicott.disclosure.package import ndop_from_cache
    from caldicott.policy.ndop_cache import NdopKeys
    from caldicott.policy.state_tables import ndop_cache

    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, request_type="research", legal_basis="research_s251",
                                            categories=["demographics"], date_from="2024-01-01",
                                            date_to="2024-06-30"))
    lookup = ndop_from_cache(state_engine, b"n" * 32)   # the deployment's cache key (caldicott_ndop_cache_key)
    with pytest.raises(PackageError, match="no current check"):
        build_package(synth_source.engine, req, opted_out=lookup, pseudonym_key=KEY)
    f = synth_source.result.frames
    numbers = sorted({n for n in f["patient"].nhs_number.dropna() if len(n) == 10})
    now = utcnow()
    with state_engine.begin() as conn:
        conn.execute(ndop_cache.insert(), [
            {"nhs_hash": h, "opted_out": i % 10 == 0, "checked_at": now, "expires_at": now + dt.timedelta(days=1),
             "request_id": "t"} for i, h in enumerate(NdopKeys(b"n" * 32).cache_keys(numbers))])
    pkg = build_package(synth_source.engine, req, opted_out=lookup, pseudonym_key=KEY)
    assert pkg.ndop["opted_out"] > 0 and pkg.counts["demographics"] == pkg.ndop["included_patients"]


# ---- who may decide, what an approval binds, the e-mail route's request checks ------------------------
GOOD_FORM = {"reasons": "sealed order seen; limited to what it specifies", "legal_basis_confirmed": True,
             "tell_patient": True, "not_told_reason": "n/a", "consulted": "Caldicott Guardian"}


def _held(synth_source, state_engine, requester, reference: str, **over):
    pid, d_from, d_to = _patient_with_history(synth_source)
    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, request_type="court_order", legal_basis="court_order",
                                            reference=reference, local_patient_id=pid, categories=["appointments"],
                                            date_from=str(d_from), date_to=str(d_to), **over))
    flow.record_request(state_engine, req, "api")
    return req, flow.make_package(synth_source.engine, state_engine, req)


@pytest.mark.parametrize(("user", "approvers"), [
    ({"id": "admin", "name": "admin"}, APPROVERS),       # a real user, not assigned
    ({"id": "", "name": "manager1"}, APPROVERS),         # a name alone is not an identity
    ({}, APPROVERS),                                     # nobody recorded
    ({"id": "manager1", "name": "manager1"}, []),        # no approvers configured: nobody may decide
])
def test_answer_from_someone_not_an_approver_is_not_a_decision(synth_source, state_engine, requester, tmp_path,
                                                               user, approvers):
    req, summary = _held(synth_source, state_engine, requester, "NA-1")
    for option in ("Approve", "Refuse"):
        with pytest.raises(flow.NotAnApprover) as exc:
            flow.record_decision(state_engine, summary, {"chosen_options": [option], "params_input": GOOD_FORM,
                                                         "responded_by_user": user}, approvers=approvers)
        assert "admin" not in str(exc.value) and req.local_patient_id not in str(exc.value)
    assert isinstance(exc.value, flow.DecisionIncomplete)  # the DAG fails the run on it
    did = req.disclosure_id
    assert register.status(state_engine, did) == "open" and register.decision(state_engine, did) is None
    attempts = [e for e in register.events(state_engine, did) if e["event"] == register.NOT_AUTHORISED]
    assert len(attempts) == 2 and attempts[0]["details"]["responded_by_id"] == str(user.get("id") or "")
    # nothing can be released on it
    res = flow.release(state_engine, req, OutboxSender(tmp_path / "outbox"), did)
    assert res["released"] is False and not (tmp_path / "outbox").exists()
    # an assigned approver can still decide
    out = flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                       "responded_by_user": {"id": "7", "name": "manager2"}},
                               approvers=["manager2"])   # FAB: the id is a database number, the name the user
    assert out["outcome"] == "approved" and register.decision(state_engine, did)["actor"] == "manager2"


def test_told_and_a_reason_not_to_tell_is_incomplete(synth_source, state_engine, requester):
    req, summary = _held(synth_source, state_engine, requester, "TELL-1")
    with pytest.raises(flow.DecisionIncomplete, match="reason not to tell"):
        flow.record_decision(state_engine, summary, {
            "chosen_options": ["Approve"], "params_input": {**GOOD_FORM, "not_told_reason": "tipping_off"},
            "responded_by_user": {"id": "manager1", "name": "manager1"}}, approvers=APPROVERS)
    assert register.status(state_engine, req.disclosure_id) == "open"


def test_approval_binds_the_route_and_certificate(synth_source, state_engine, requester, tmp_path):
    req, summary = _held(synth_source, state_engine, requester, "ROUTE-1")
    assert summary["channel"] == "outbox" and summary["certificate_sha256"] == req.certificate_sha256
    flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                 "responded_by_user": {"id": "manager1", "name": "manager1"}},
                         approvers=APPROVERS)
    approved = register.decision(state_engine, req.disclosure_id)["details"]
    assert approved["channel"] == "outbox" and approved["certificate_sha256"] == req.certificate_sha256
    # a second run of the same reference, asking for another route: the approved bytes do not follow it
    other = make_identity("Someone Else")
    for over in ({"channel": "sftp", "recipient_address": "/elsewhere"},
                 {"channel": "smime-email", "recipient_address": "someone@else.example"},
                 {"recipient_certificate_pem": other.cert_pem.decode()}):
        conf = _conf(requester.cert_pem, request_type="court_order", legal_basis="court_order", reference="ROUTE-1",
                     local_patient_id=req.local_patient_id, categories=["appointments"],
                     date_from=str(req.date_from), date_to=str(req.date_to))
        moved = DisclosureRequest.from_conf({**conf, **over})
        assert moved.disclosure_id == req.disclosure_id
        res = flow.release(state_engine, moved, OutboxSender(tmp_path / "outbox"), req.disclosure_id)
        assert res["released"] is False and "route differs" in res["reason"]
    assert not (tmp_path / "outbox").exists()
    assert len([e for e in register.events(state_engine, req.disclosure_id)
                if e["event"] == register.RELEASE_REFUSED]) == 3
    assert flow.release(state_engine, req, OutboxSender(tmp_path / "outbox"), req.disclosure_id)["released"]


def test_register_records_the_certificate_by_fingerprint(requester):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, local_patient_id="P1"))
    d = req.register_details()
    assert "recipient_certificate_pem" not in d
    assert d["certificate_sha256"] == x509.load_pem_x509_certificate(requester.cert_pem).fingerprint(
        hashes.SHA256()).hex()


def test_smime_email_needs_one_clean_mailbox(requester):
    base = _conf(requester.cert_pem, local_patient_id="P1", channel="smime-email")
    for bad in ("", "not an address", "a@b.example, c@d.example", "a@b.example\r\nBcc: x@y.example",
                "Court <clerk@court.example>"):
        with pytest.raises(RequestInvalid, match="recipient_address"):
            DisclosureRequest.from_conf({**base, "recipient_address": bad})
    ok = DisclosureRequest.from_conf({**base, "recipient_address": "disclosures.oxford@justice.gov.example"})
    assert ok.channel == "smime-email"
    with pytest.raises(RequestInvalid, match="control"):  # no header injection through any channel
        DisclosureRequest.from_conf({**base, "channel": "sftp", "recipient_address": "/in\nbox"})


def test_mail_sender_never_emails_a_package_in_clear():
    from caldicott.disclosure.mail import message
    from caldicott.transport.base import TransportError

    for payload, protection in ((b"PK\x03\x04 a zip", Protection.SMIME),
                                (b"Content-Type: application/pkcs7-mime; smime-type=\"enveloped-data\"\r\n\r\nx",
                                 Protection.CMS)):
        item = Outbound("disclosure-x", Purpose.DISCLOSURE, "court_order:x", "smime-email", payload, protection,
                        address="clerk@court.example", disclosure_id="dsc-x")
        with pytest.raises(TransportError, match="not an S/MIME envelope") as exc:
            message(item, "disclosures@nhs.example")
        assert exc.value.retryable is False


# ---- issue 14: decisions only from Airflow's HITL record, separation of duties, an honest approval page -----
def test_the_requester_cannot_decide_their_own_request(synth_source, state_engine, requester, tmp_path):
    pid, d_from, d_to = _patient_with_history(synth_source)
    req = DisclosureRequest.from_conf(_conf(requester.cert_pem, reference="SOD-1", local_patient_id=pid,
                                            date_from=str(d_from), date_to=str(d_to)))
    flow.record_request(state_engine, req, "manager1")   # a manager filed it (Airflow's triggering user)
    summary = flow.make_package(synth_source.engine, state_engine, req)
    with pytest.raises(flow.NotAnApprover, match="separation of duties"):
        flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                     "responded_by_user": {"id": "manager1", "name": "manager1"}},
                             approvers=APPROVERS)
    [attempt] = [e for e in register.events(state_engine, req.disclosure_id) if e["event"] == register.NOT_AUTHORISED]
    assert "separation of duties" in attempt["details"]["why"] and attempt["actor"] == "manager1"
    assert flow.release(state_engine, req, OutboxSender(tmp_path / "o"), "k")["released"] is False
    # the other manager can
    assert flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                        "responded_by_user": {"id": "manager2", "name": "manager2"}},
                                approvers=APPROVERS)["outcome"] == "approved"


def test_no_answer_in_airflows_record_decides_nothing(synth_source, state_engine, requester, tmp_path):
    """The approval step's HITL record holds no answer (e.g. the task was marked successful by hand)."""
    req, summary = _held(synth_source, state_engine, requester, "NOANS-1")
    did = req.disclosure_id
    with pytest.raises(flow.DecisionIncomplete, match="no answer"):
        flow.record_decision(state_engine, summary, {"response_received": False, "chosen_options": [],
                                                     "params_input": {}, "responded_by_user": None},
                             approvers=APPROVERS)
    assert register.has_event(state_engine, did, register.NO_HITL_RESPONSE) and register.decision(state_engine, did) \
        is None
    # the branch after the approval step reads the register: no decision there is recorded and refused
    with pytest.raises(flow.DecisionIncomplete, match="no decision"):
        flow.decided_outcome(state_engine, did)
    assert register.has_event(state_engine, did, register.NO_DECISION)
    res = flow.release(state_engine, req, OutboxSender(tmp_path / "o"), did)
    assert res["released"] is False and not (tmp_path / "o").exists()
    assert register.latest(state_engine, did, register.RELEASE_REFUSED)["details"]["reason"] == \
        "no approval in the register"


def test_approval_binds_the_server_the_approver_saw(synth_source, state_engine, requester, tmp_path):
    req, summary = _held(synth_source, state_engine, requester, "EP-1")
    seen = {"folder": str(tmp_path / "o")}
    flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                 "responded_by_user": {"id": "manager1", "name": "manager1"}},
                         approvers=APPROVERS, endpoint=seen)
    res = flow.release(state_engine, req, OutboxSender(tmp_path / "o"), "k", endpoint={"folder": "/elsewhere"})
    assert res["released"] is False and "another server" in res["reason"] and not (tmp_path / "o").exists()
    assert flow.release(state_engine, req, OutboxSender(tmp_path / "o"), "k", endpoint=seen)["released"]


HOSTILE_ORG = "X` by `outbox`<!-- \n\n**Recipient** by `outbox` -->[click](http://evil.example)"


def _rendered_text(markdown: str) -> str:
    """What a reader sees: the Markdown rendered by a CommonMark implementation, tags stripped."""
    import html
    import re

    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").render(markdown)
    assert "<!--" not in rendered and "<a " not in rendered and "<code>" not in rendered
    return html.unescape(re.sub(r"<[^>]+>", "", rendered))


def test_approval_page_escapes_what_the_requester_typed_and_shows_the_route(synth_source, state_engine, requester):
    import re

    from caldicott.disclosure.approval import md_text

    for value in (HOSTILE_ORG, "a*b*_c_ <b>bold</b> &amp; # not a heading", "ok\u202etxt.exe", "`"):
        text = _rendered_text(md_text(value))   # one line, exactly the value (controls and bidi marks as spaces)
        assert text.strip() == re.sub(r"[\x00-\x1f\u202e]+", " ", value).strip()
    req, _ = _held(synth_source, state_engine, requester, "PAGE-1", requester_org_code=HOSTILE_ORG, channel="sftp",
                   recipient_address="/inbound/x", requester_person="DS <i>Example</i>")
    subject, body = flow.approval_text(state_engine, req.disclosure_id, 60, approvers=APPROVERS,
                                       endpoint={"host": "sftp.requester.example", "port": "2222"})
    text = _rendered_text(body)
    assert "SFTP to the requester's server" in text and "sftp.requester.example:2222" in text
    assert "Remote folder /inbound/x" in text and "Outbox folder" not in text
    assert f"Certificate SHA-256 {req.certificate_sha256}" in text
    assert f"Encrypted to certificate {req.certificate_subject}" in text and "Requester Test" in text
    assert "DS <i>Example</i>" in text and "warrant card checked" in text and "PAGE-1" in text
    assert "Asked for by api" in text and "Who may decide manager1, manager2" in text
    assert req.local_patient_id not in subject + body


def _ledger_detail(state_engine, item: str) -> str | None:
    from sqlalchemy import text

    with state_engine.connect() as c:
        return c.execute(text("SELECT detail FROM delivery_ledger WHERE item_id = :i"), {"i": item}).scalar()


def test_the_requesters_country_is_shown_bound_and_checked(synth_source, state_engine, requester, tmp_path):
    """A requester outside the adequacy list: the approver sees the country, and even approved nothing leaves; the
    ledger holds the package with the rule. A country the approver did not see cannot be released to either."""
    with pytest.raises(RequestInvalid, match="country"):
        DisclosureRequest.from_conf(_conf(requester.cert_pem, local_patient_id="P1", country="United States"))
    unstated = {k: v for k, v in _conf(requester.cert_pem, local_patient_id="P1").items() if k != "country"}
    with pytest.raises(RequestInvalid, match="country is required"):   # never assumed
        DisclosureRequest.from_conf(unstated)
    req, summary = _held(synth_source, state_engine, requester, "US-1", country="us")
    assert req.country == "US" and summary["country"] == "US"
    assert register.latest(state_engine, req.disclosure_id, register.REQUESTED)["details"]["country"] == "US"
    _, body = flow.approval_text(state_engine, req.disclosure_id, 60, approvers=APPROVERS,
                                 endpoint={"folder": "/out"})
    assert "**Country** US" in body
    flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                 "responded_by_user": {"id": "manager1", "name": "manager1"}},
                         approvers=APPROVERS)
    # the same request said to be in GB: not the route the approver saw
    conf = _conf(requester.cert_pem, request_type="court_order", legal_basis="court_order", reference="US-1",
                 local_patient_id=req.local_patient_id, categories=["appointments"], date_from=str(req.date_from),
                 date_to=str(req.date_to), country="GB")
    moved = DisclosureRequest.from_conf(conf)
    res = flow.release(state_engine, moved, OutboxSender(tmp_path / "outbox"), req.disclosure_id)
    assert res["released"] is False and "route differs" in res["reason"] and "country" in res["reason"]
    # as approved: refused by the release gateway's adequacy check, held in the ledger with the rule
    res = flow.release(state_engine, req, OutboxSender(tmp_path / "outbox"), req.disclosure_id)
    assert res["released"] is False and res["refused"] == 1
    assert "adequacy: US not on the adequacy list" in res["reason"]
    item = flow.item_id("disclosure", req.disclosure_id)
    assert Ledger(state_engine).get(item).state == State.HELD.value
    assert "US not on the adequacy list" in (_ledger_detail(state_engine, item) or "")
    assert not (tmp_path / "outbox").exists()
    assert register.status(state_engine, req.disclosure_id) != "released"


def test_a_requester_in_an_adequate_country_is_released_to(synth_source, state_engine, requester, tmp_path):
    req, summary = _held(synth_source, state_engine, requester, "IE-1", country="IE")
    flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": GOOD_FORM,
                                                 "responded_by_user": {"id": "manager1", "name": "manager1"}},
                         approvers=APPROVERS)
    res = flow.release(state_engine, req, OutboxSender(tmp_path / "outbox"), req.disclosure_id)
    assert res["released"] and res["sent"] == 1
