"""transfer_of_care, domain level: routing, minimum necessary (decrypting what left), the adequacy check at the
release gateway (refused, recorded, and changed by the list without a code change), holds, exactly once.

The senders here are in-memory recorders (tests only): the real peers are in tests/peers/test_transfer_peers.py."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path

import pytest
from caldicott.crypto.smime import open_der, open_envelope
from caldicott.db import make_engine, sqlite_url
from caldicott.letters.pdf import pdf_text
from caldicott.policy import adequacy
from caldicott.policy import transfers as policy
from caldicott.state.quarantine import entries as quarantine_entries
from caldicott.transfers import flow
from caldicott.transport.ledger import Ledger

from tests.recorder import Recorder
from tests.unit.transfers import source

DAY, NEXT = source.DAY, source.DAY + dt.timedelta(days=1)


@pytest.fixture
def src(synth_source, tmp_path):
    db = source.copy_source(Path(make_engine(synth_source.url).url.database), tmp_path / "records.db")
    engine = make_engine(sqlite_url(db))
    planted = source.plant(engine, mesh_mailbox="X26ABC3")
    return engine, planted


def _channels(service, print_pem: str | None = None) -> tuple[flow.Channels, dict[str, Recorder]]:
    rec = {k: Recorder(k) for k in ("smtp", "mesh", "post", "sftp")}
    return flow.Channels(rec, service, from_addr="transfers@nhs.example", sender_mailbox="X26ABC1",
                         print_certificate_pem=print_pem), rec


def _run(records, state, service) -> tuple[dict, list[dict], dict[str, Recorder]]:
    planned = flow.plan(records, state, DAY, NEXT, DAY.isoformat())
    ch, rec = _channels(service)
    results = [flow.send_batch(records, state, b, ch, DAY, NEXT) for b in planned["batches"]]
    return planned, results, rec


def _ids(planted, org: str, kind: str = "receiver") -> str:
    oid = next(o for o, code in planted.onward.items() if code == org)
    return flow.report_id(oid, kind)


def test_reports_go_to_each_receiver_on_its_channel_and_the_overseas_one_is_refused(src, state_engine, service):
    records, planted = src
    planned, results, rec = _run(records, state_engine, service)
    refused = {k: v for r in results for k, v in r["refused_reasons"].items()}
    sent = {i.item_id: i for r in rec.values() for i in r.items}
    assert _ids(planted, "ZTMSH1") in sent and sent[_ids(planted, "ZTMSH1")].headers["workflow_id"] == \
        source.MESH_WORKFLOW
    assert sent[_ids(planted, "ZTMSH1")].address == "X26ABC3"
    assert _ids(planted, "ZTSMI1") in sent and _ids(planted, "ZTSFT1") in sent   # IE: EEA, adequate
    # outside the adequacy list: nothing leaves, the ledger holds it with the rule, the run says why
    us = _ids(planted, "ZTUSA1")
    assert us not in sent and "US not on the adequacy list" in refused[us]
    entry = Ledger(state_engine).get(us)
    assert entry.state == "held"
    assert us in planned["not_adequate_ids"]
    # its copies wait for the receiver: the patient is not told a report went that did not
    assert _ids(planted, "ZTUSA1", "patient") in planned["awaiting_receiver_ids"]
    assert _ids(planted, "ZTUSA1", "patient") not in sent
    # no usable channel: held with its reason (never sent plain), quarantined, copies wait
    none = _ids(planted, "ZTNON1")
    assert none in planned["held_ids"] and none not in sent
    assert Ledger(state_engine).get(none).state == "held"
    assert any(q.reason_code == "receiver_no_channel" for q in quarantine_entries(state_engine, flow.FLOW,
                                                                                  DAY.isoformat()))
    # copies: patient always, GP unless declined (as the letters)
    for org in ("ZTMSH1", "ZTSMI1", "ZTSFT1"):
        assert _ids(planted, org, "patient") in sent
        gp = _ids(planted, org, "gp")
        assert gp in sent or gp in planned["withheld_ids"] or gp in planned["held_ids"]
    # every item that left declared its country and passed the gateway's check
    for item in sent.values():
        assert adequacy.refusal(item) is None and item.headers.get("country")


def test_nothing_beyond_the_minimum_necessary_leaves(src, state_engine, service, synth_source):
    """Decrypt what was sent to each receiver and check only policy fields are in it (never notes, address,
    e-mail, telephone of the patient, recommendations or plan)."""
    records, planted = src
    _, _, rec = _run(records, state_engine, service)
    sent = {i.item_id: i for r in rec.values() for i in r.items}
    smi = planted.identities["ZTSMI1"]
    msg = email.message_from_bytes(open_envelope(sent[_ids(planted, "ZTSMI1")].payload, smi.cert_pem, smi.key_pem),
                                   policy=email.policy.default)
    pdfs = {"ZTSMI1": next(p.get_content() for p in msg.iter_attachments())}
    sft = planted.identities["ZTSFT1"]
    pdfs["ZTSFT1"] = open_der(sent[_ids(planted, "ZTSFT1")].payload, sft.cert_pem, sft.key_pem)
    pdfs["ZTMSH1"] = sent[_ids(planted, "ZTMSH1")].payload
    import pandas as pd
    from caldicott.records import schema
    from sqlalchemy import select

    for org, pdf in pdfs.items():
        text = " ".join(pdf_text(pdf).split())
        oid = next(o for o, c in planted.onward.items() if c == org)
        ref = pd.read_sql(select(schema.referral).where(schema.referral.c.service_request_id ==
                                                        planted.referral_of[oid]), records).iloc[0]
        pat = pd.read_sql(select(schema.patient).where(schema.patient.c.local_patient_id == ref["local_patient_id"]),
                          records).iloc[0]
        notes = pd.read_sql(select(schema.care_contact.c.clinical_summary).where(
            schema.care_contact.c.service_request_id == ref["service_request_id"]), records)["clinical_summary"]
        # what must be there
        assert pat["family_name"] in text and source.CONTACT["display_name"] in text
        assert "Low risk" in text and "PHQ-9" in text and "Onward referral reason" in text
        # what must not
        for value in [pat["email"], pat["address_line"], pat["postcode"], ref["discharge_recommendations"],
                      ref["assessment_plan"], *[n for n in notes if isinstance(n, str) and len(n) > 12]]:
            if isinstance(value, str) and value.strip():
                assert " ".join(value.split()) not in text, f"{org}: a field outside the policy left"
    # and the template can only show what it is given: the content holds exactly the policy's sections and fields
    from caldicott.transfers.build import find_transfers, load_transfers

    for data in load_transfers(records, find_transfers(records, DAY, NEXT)):
        for section, fields in policy.REPORT_FIELDS.items():
            assert set(data.report[section]) == set(fields)
        assert set(data.report) == set(policy.REPORT_FIELDS) | {"meaning"}


def test_changing_the_adequacy_list_changes_the_outcome_without_a_code_change(src, state_engine, service, tmp_path,
                                                                              monkeypatch):
    records, planted = src
    own = tmp_path / "our-adequacy.tsv"
    own.write_text("GB\tUnited Kingdom\nUS\tUnited States (our recipients checked: DPF UK Extension)\n")
    monkeypatch.setenv(adequacy.FILE_SETTING, str(own))
    _, results, rec = _run(records, state_engine, service)
    sent = {i.item_id for r in rec.values() for i in r.items}
    refused = {k: v for r in results for k, v in r["refused_reasons"].items()}
    assert _ids(planted, "ZTUSA1") in sent                 # now allowed
    assert "IE not on the adequacy list" in refused[_ids(planted, "ZTSFT1")]   # now refused: not in our list


def test_blank_unknown_or_unreadable_country_is_refused(monkeypatch, tmp_path):
    from caldicott.policy.purposes import Protection, Purpose
    from caldicott.transport.base import Outbound

    def item(**headers):
        return Outbound("t-1", Purpose.TRANSFER_OF_CARE, "X", "mesh", b"x", Protection.MESH, headers=headers)

    assert "not declared" in adequacy.refusal(item())
    assert "unknown" in adequacy.refusal(item(country=""))
    assert "unknown" in adequacy.refusal(item(country="United Kingdom"))
    assert adequacy.refusal(item(country="gb")) is None
    assert "XX" in adequacy.refusal(item(country="GB", via_country="XX"))
    monkeypatch.setenv(adequacy.FILE_SETTING, str(tmp_path / "missing.tsv"))
    assert "cannot be read" in adequacy.refusal(item(country="GB"))
    monkeypatch.delenv(adequacy.FILE_SETTING)
    # purposes whose recipients are in the UK by law or NHS role keep their documented default
    assert adequacy.refusal(Outbound("t-2", Purpose.NDOP_CHECK, "X", "mesh", b"x", Protection.MESH)) is None
    assert "not declared" in adequacy.refusal(Outbound("t-3", Purpose.TRANSFER_OF_CARE, "X", "mesh", b"x",
                                                       Protection.MESH))


def test_a_rerun_sends_nothing_twice(src, state_engine, service):
    records, _ = src
    _, first, _rec1 = _run(records, state_engine, service)
    _, again, rec2 = _run(records, state_engine, service)
    assert sum(r["sent"] for r in first) > 0
    assert sum(r["sent"] for r in again) == 0 and not any(r.items for r in rec2.values())
    assert sum(r["already_sent"] for r in again) == sum(r["sent"] for r in first)
