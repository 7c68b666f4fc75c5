"""A month built from the seeded source, against counts computed independently from the generator's frames;
the BST boundary; the opt-out matrix (with the real figures in the statement and the report); the encrypted archive
(Parquet and IDB CSVs, nothing in clear on disk); staging exactly once; the submission register."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from caldicott.dataset import builder, pipeline, rules, state_tables
from caldicott.dataset.builder import Period, SourceMonth, read_source
from caldicott.dataset.submit import resolve_target, submit
from caldicott.dataset.writer import decrypt, encrypt, load_key, new_key, read_archive
from caldicott.db import make_engine, sqlite_url
from caldicott.policy import dataset as policy
from caldicott.policy.evidence import establish
from caldicott.policy.ndop_check import NdopChecker
from caldicott.records import schema
from caldicott.transport.ledger import Ledger
from caldicott.transport.staging import StagingSender
from cryptography.exceptions import InvalidTag
from sqlalchemy import insert

from devtools.peers.ndop_double import NdopDouble
from devtools.peers.ndop_responder import SERVICE_MAILBOX


def build(*args, **kw):
    """The builder with the test provider's ODS code (OrgIDProv has no default)."""
    return builder.build(*args, **{"org_provider": "ZZZ01", **kw})

SEPT = Period.month(2026, 9)


def expected_counts(frames: dict[str, pd.DataFrame], period: Period) -> dict[str, int]:
    """Plain pandas over the generator's frames, written without the builder's code."""
    ref, cc, ca = frames["referral"], frames["care_contact"], frames["coded_assessment"]
    rec, dis = pd.to_datetime(ref["received_date"]), pd.to_datetime(ref["discharge_date"])
    open_ = ref[(rec < pd.Timestamp("2026-10-01")) & (dis.isna() | (dis >= pd.Timestamp("2026-09-01")))]
    # London midnight 1 Sep 2026 = 23:00 UTC 31 Aug (BST); 1 Oct 2026 = 23:00 UTC 30 Sep (BST)
    lo, hi = pd.Timestamp("2026-08-31 23:00"), pd.Timestamp("2026-09-30 23:00")
    at = pd.to_datetime(cc["contact_at"])
    contacts = cc[(at >= lo) & (at < hi) & cc["service_request_id"].isin(open_["service_request_id"])]
    sat = pd.to_datetime(ca["assessed_at"])
    scores = ca[(sat >= lo) & (sat < hi) & ca["service_request_id"].isin(open_["service_request_id"])]
    with_activity = (contacts["attend_code"].isin(["5", "6"])
                     | contacts["care_contact_id"].isin(scores["care_contact_id"]))
    new = open_[pd.to_datetime(open_["received_date"]) >= pd.Timestamp("2026-09-01")]
    return {"IDS000Header": 1, "IDS001MPI": open_["local_patient_id"].nunique(),
            "IDS002GP": open_["local_patient_id"].nunique(), "IDS101Referral": len(open_),
            "IDS201CareContact": len(contacts), "IDS202CareActivity": int(with_activity.sum()),
            "IDS603PresentingComplaints": int(new["presenting_problem_code"].notna().sum()),
            "IDS606CodedScoreAssessmentRefer": int(scores["care_contact_id"].isna().sum()),
            "IDS607CodedScoreAssessmentAct": int(scores["care_contact_id"].notna().sum())}


def test_month_from_seeded_source_matches_independent_counts(synth_source):
    ds = build(read_source(synth_source.engine, SEPT), SEPT)
    want = expected_counts(synth_source.result.frames, SEPT)
    # the tables counted here independently; the others' selection: tests/unit/dataset/test_builder_tables.py
    assert {t: n for t, n in ds.counts().items() if t in want} == want and set(ds.counts()) >= set(want)
    assert want["IDS101Referral"] > 20 and want["IDS201CareContact"] > 20
    before = {t: set(df["_rid"]) for t, df in ds.tables.items()}
    res = rules.screen(ds)
    assert res.file_failures == []
    bad = synth_source.manifest["bad"]
    frames = synth_source.result.frames
    q = {(x.reason_code, x.record_id) for x in res.quarantined}
    blanked = {(b.table, b.column, b.rule_code, r) for b in res.blanked for r in b.record_ids}
    items = {(x.record_type, x.record_id, x.reason_code) for x in res.blanked_items}
    mpi = ds.tables["IDS001MPI"].set_index("LocalPatientId")
    # an invalid NHS number or a postcode without its space: the patient stays, the field is blanked and reported
    # (nationally a blank NHS number or postcode is only a warning: IDS00111, IDS00123)
    seen: set[str] = set()
    for key, code, col in [("invalid_nhs_number", "IDSREJ006", "NHSNumber"),
                           ("postcode_without_space", "IDSREJ007", "Postcode")]:
        planted = set(bad[key]) & before["IDS001MPI"]
        seen.update(planted)
        for pid in planted:
            assert pid in mpi.index and pd.isna(mpi.at[pid, col]), (key, pid)
            assert ("IDS001MPI", col, code, pid) in blanked and ("IDS001MPI", pid, code) in items
            assert not any(r == pid for _, r in q)
    assert seen                                         # the seeded month holds some of them
    # their referrals are all submitted
    theirs = set(frames["referral"].loc[frames["referral"]["local_patient_id"].isin(
        set(bad["invalid_nhs_number"]) | set(bad["postcode_without_space"])), "service_request_id"])
    assert theirs & before["IDS101Referral"] <= set(ds.tables["IDS101Referral"]["ServiceRequestId"])
    # a PHQ-9 of 31 is out of the item's range: a warning (IDS60607 / IDS60707), the score is submitted; checked in
    # the month of the first planted one (the seeded September may hold none)
    ca = frames["coded_assessment"]
    out = ca[ca["assessment_id"].isin(bad["score_out_of_range"])]
    first = pd.Timestamp(out["assessed_at"].min()) + pd.Timedelta(hours=12)     # clear of a London/UTC boundary
    month = Period.month(first.year, first.month)
    mds = build(read_source(synth_source.engine, month), month)
    mbefore = {t: set(df["_rid"]) for t, df in mds.tables.items()}
    mres = rules.screen(mds)
    refer = set(out.loc[out["care_contact_id"].isna(), "assessment_id"]) & mbefore["IDS606CodedScoreAssessmentRefer"]
    act = set(out.loc[out["care_contact_id"].notna(), "assessment_id"]) & mbefore["IDS607CodedScoreAssessmentAct"]
    assert refer | act
    assert refer <= set(mds.tables["IDS606CodedScoreAssessmentRefer"]["_rid"])
    assert act <= set(mds.tables["IDS607CodedScoreAssessmentAct"]["_rid"])
    assert mres.failures.get("IDS60607", 0) >= len(refer) and mres.failures.get("IDS60707", 0) >= len(act)
    assert not {x.record_id for x in mres.quarantined} & (refer | act)


def test_planted_faults_in_the_month_are_quarantined_with_their_codes(synth_source):
    src = read_source(synth_source.engine, SEPT)
    p = src.patients
    p.loc[0, "nhs_number"] = p.loc[0, "nhs_number"][:9] + str((int(p.loc[0, "nhs_number"][9]) + 1) % 10)
    p.loc[1, "postcode"] = "LS11AB"
    p.loc[2, "birth_date"] = "2030-01-01"
    p.loc[4, "nhs_number"] = p.loc[3, "nhs_number"]
    ids = p["local_patient_id"].tolist()
    ds = build(src, SEPT)
    refs_before = set(ds.tables["IDS101Referral"]["ServiceRequestId"])
    res = rules.screen(ds)
    assert res.file_failures == []
    blanked = {(b.rule_code, b.column, r) for b in res.blanked for r in b.record_ids}
    assert {("IDSREJ006", "NHSNumber", ids[0]), ("IDSREJ007", "Postcode", ids[1]),
            ("IDSREJ008", "PersonBirthDate", ids[2]), ("IDSREJ009", "NHSNumber", ids[3]),
            ("IDSREJ009", "NHSNumber", ids[4])} <= blanked
    assert {("IDS001MPI", ids[0], "IDSREJ006"), ("IDS001MPI", ids[2], "IDSREJ008")} <= \
        {(x.record_type, x.record_id, x.reason_code) for x in res.blanked_items}
    # the five patients are all still submitted, with the failing field blank
    mpi = ds.tables["IDS001MPI"].set_index("LocalPatientId")
    assert set(ids[:5]) <= set(mpi.index)
    for pid, col in [(ids[0], "NHSNumber"), (ids[1], "Postcode"), (ids[2], "PersonBirthDate"),
                     (ids[3], "NHSNumber"), (ids[4], "NHSNumber")]:
        assert pd.isna(mpi.at[pid, col]), (pid, col)
    assert not {r for x in res.quarantined for r in [x.record_id]} & set(ids[:5])
    for code in rules.FILE_RECORD_CODES:
        assert not np.asarray(rules.REGISTRY[code].check(ds)).any()
    # and so are their referrals
    theirs = set(src.referrals.loc[src.referrals["local_patient_id"].isin(ids[:5]), "service_request_id"])
    theirs &= refs_before
    assert theirs and theirs <= set(ds.tables["IDS101Referral"]["ServiceRequestId"])


def _records_db(tmp_path: Path):
    engine = make_engine(sqlite_url(tmp_path / "records.db"))
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(schema.patient), [{"local_patient_id": "P1", "nhs_number": "9990000018",
                                               "given_name": "A", "family_name": "B", "birth_date": dt.date(1990, 1, 1),
                                               "postcode": "LS1 1AB", "gender": "2", "ethnic_category": "A",
                                               "gp_practice_code": "Z84000", "copy_channel": "post",
                                               "gp_sharing_consent": True}])
        conn.execute(insert(schema.referral), [{"service_request_id": "R1", "local_patient_id": "P1",
                                                "source_of_referral": "B1", "commissioner_code": "ZC1",
                                                "received_date": dt.date(2026, 4, 1)}])
        conn.execute(insert(schema.care_contact), [
            {"care_contact_id": cid, "service_request_id": "R1", "contact_at": at, "app_type": "02",
             "attend_code": "5", "cons_mechanism": "01", "ltc_service": "N"}
            for cid, at in [("C-MAY", dt.datetime(2026, 5, 31, 22, 59)),    # 23:59 BST 31 May
                            ("C-JUN", dt.datetime(2026, 5, 31, 23, 30)),    # 00:30 BST 1 June
                            ("C-OCT", dt.datetime(2026, 10, 31, 23, 30)),   # 23:30 GMT 31 Oct (BST ended 25 Oct)
                            ("C-NOV", dt.datetime(2026, 11, 1, 0, 30))]])
    return engine


def test_bst_boundaries_are_london_dates(tmp_path):
    engine = _records_db(tmp_path)
    june = build(read_source(engine, Period.month(2026, 6)), Period.month(2026, 6)).tables["IDS201CareContact"]
    may = build(read_source(engine, Period.month(2026, 5)), Period.month(2026, 5)).tables["IDS201CareContact"]
    october = build(read_source(engine, Period.month(2026, 10)), Period.month(2026, 10)).tables["IDS201CareContact"]
    assert june["CareContactId"].tolist() == ["C-JUN"]
    assert str(june["CareContDate"][0].date()) == "2026-06-01" and june["CareContTime"][0] == "00:30:00"
    assert may["CareContactId"].tolist() == ["C-MAY"] and may["CareContTime"][0] == "23:59:00"
    assert october["CareContactId"].tolist() == ["C-OCT"]
    assert Period.month(2026, 6).utc_bounds() == (dt.datetime(2026, 5, 31, 23), dt.datetime(2026, 6, 30, 23))
    assert Period.month(2026, 11).utc_bounds() == (dt.datetime(2026, 11, 1), dt.datetime(2026, 12, 1))


def test_read_source_on_postgresql_matches_sqlite(synth_source, pg_url):
    from caldicott.records import synth

    engine = make_engine(pg_url)
    synth.write(synth_source.result, engine)
    a = build(read_source(engine, SEPT), SEPT)
    b = build(read_source(synth_source.engine, SEPT), SEPT)
    assert a.counts() == b.counts()


def _tiny_with_objector():
    from tests.unit.dataset.test_rules import tiny_source

    src = tiny_source()
    src.patients["dataset_objection_pre2020"] = [None, None, True]
    src.patients["dataset_objection_date"] = [None, None, dt.date(2020, 6, 1)]
    extra = src.referrals.iloc[[2]].assign(service_request_id="R3OLD", received_date=dt.date(2020, 6, 1))
    src.referrals = pd.concat([src.referrals, extra], ignore_index=True)
    return src


@pytest.mark.parametrize(("mode", "kept_refs"), [
    ("referrals_before_cutover", {"R1", "R2", "R3"}),
    ("whole_patient", {"R1", "R2"}),
    ("ignore", {"R1", "R2", "R3", "R3OLD"}),
])
def test_pre2020_objection_rule_is_configurable(mode, kept_refs):
    src = _tiny_with_objector()
    ds = build(src, SEPT)
    counts = policy.apply_pre2020(ds, src.patients, mode)
    assert set(ds.tables["IDS101Referral"]["ServiceRequestId"]) == kept_refs
    assert counts["mode"] == mode
    assert ("P3" in set(ds.tables["IDS001MPI"]["LocalPatientId"])) == (mode != "whole_patient")


def test_optout_matrix_and_submission_flow(synth_source, state_engine, tmp_path, monkeypatch):
    """NDOP patient IN the mandated tables and NOT in the commissioner extract; staged once; confirmed."""
    monkeypatch.setenv("CALDICOTT_NDOP_MAILBOX", SERVICE_MAILBOX)   # where the gateway lets the check go
    key = load_key(new_key())
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=key,
                          provider_name="Synthetic Talking Therapies")
    out = pipeline.build_validate_write(synth_source.engine, state_engine, SEPT, s)
    assert out["state"] == "written" and out["rows"]["IDS101Referral"] > 0
    # before the opt-out check answers, the statement and the report say "pending", never a made-up number
    stmt = json.loads((s.month_dir(SEPT) / "optout_statement.json").read_text())
    kept = {r["rule"]: r for r in stmt["rules"]}["ndop_not_applied_required_by_law"]["counts"]
    assert kept == {"ndop_patients_kept_in_submission": None}
    html = (s.month_dir(SEPT) / "report.html").read_text()
    assert "pending (the opt-out check has not answered yet)" in html and "=-1" not in html
    numbers = pipeline.mpi_numbers(state_engine, SEPT, s)
    ndop_number = numbers[0]
    checker = NdopChecker(state_engine, b"k" * 32, NdopDouble(opted_out=[ndop_number]))  # test double, injected
    checker.send(numbers, pipeline.ndop_request_id(SEPT))
    assert checker.collect(pipeline.ndop_request_id(SEPT))
    status = checker.status(numbers)
    assert status.complete and status.opted_out == {ndop_number}
    planned, counts = pipeline.planning_extract(state_engine, SEPT, s, status.opted_out, set(numbers), "test double")
    blob = planned.payload
    assert planned.ndop_applied == establish("ndop_applied", blob)   # evidence for exactly the extract's bytes

    tables = read_archive(Path(state_tables.get(state_engine, "2026-09")["archive_path"]), key)
    mpi = tables["IDS001MPI"]
    assert ndop_number in set(mpi["NHSNumber"])                                  # IN the mandated submission
    pid = mpi.loc[mpi["NHSNumber"] == ndop_number, "LocalPatientId"].iloc[0]
    ref = tables["IDS101Referral"]
    theirs = set(ref.loc[ref["LocalPatientId"] == pid, "ServiceRequestId"])
    extract = pd.read_csv(io.BytesIO(decrypt(blob, key)))
    assert theirs and not theirs & set(extract["ServiceRequestId"])              # NOT in the extract
    assert "NHSNumber" not in extract.columns and "_nhs" not in extract.columns
    assert counts["planning"]["removed_ndop"] == len(theirs)
    stmt = json.loads((s.month_dir(SEPT) / "optout_statement.json").read_text())
    rules_applied = {r["rule"]: r for r in stmt["rules"]}
    assert rules_applied["ndop_not_applied_required_by_law"]["counts"]["ndop_patients_kept_in_submission"] == 1
    assert rules_applied["ndop_applied"]["output"] == "commissioner_extract"
    html = (s.month_dir(SEPT) / "report.html").read_text()          # re-rendered with the real figures
    assert "ndop patients kept in submission: 1" in html and "pending" not in html

    # archive: one Parquet and one IDB CSV per table + manifest with counts and checksums; no SQLite any more
    plain = decrypt(Path(state_tables.get(state_engine, "2026-09")["archive_path"]).read_bytes(), key)
    with zipfile.ZipFile(io.BytesIO(plain)) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        import hashlib

        for name, meta in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == meta["sha256"]
    assert {"manifest.json", "IDS001MPI.parquet", "IDS607CodedScoreAssessmentAct.parquet", "idb/IDS001MPI.csv",
            "idb/IDS607CodedScoreAssessmentAct.csv"} <= names and "intermediate.sqlite" not in names
    assert manifest["idb"]["import_order"][0] == "IDS000Header"
    assert manifest["tables"]["IDS101Referral"]["rows"] == out["rows"]["IDS101Referral"]
    with pytest.raises(ValueError):
        decrypt(Path(state_tables.get(state_engine, "2026-09")["archive_path"]).read_bytes(), load_key(new_key()))

    # staged exactly once through the gateway, then confirmed
    sender = StagingSender(tmp_path / "staging")
    target = resolve_target("staged", None, submitter=s.submitter)   # the route the monthly_dataset DAG takes
    first = submit(state_engine, SEPT, target, sender)
    second = submit(state_engine, SEPT, target, sender)
    assert first["sent"] == 1 and second["already_sent"] == 1 and second["sent"] == 0
    assert len(list((tmp_path / "staging" / "2026-09").glob("*.zip.enc"))) == 1
    assert state_tables.get(state_engine, "2026-09")["state"] == "staged"
    with pytest.raises(ValueError):
        pipeline.confirm(state_engine, SEPT, "x", "admin")
    pipeline.confirm(state_engine, SEPT, "SDCS-2026-09-01", "admin")
    row = state_tables.get(state_engine, "2026-09")
    assert row["state"] == "submitted" and row["submission_reference"] == "SDCS-2026-09-01"
    assert Ledger(state_engine).get(first["item_id"]).state == "acked"
    # a re-run of a staged month does not rebuild it
    assert pipeline.build_validate_write(synth_source.engine, state_engine, SEPT, s)["rebuilt"] is False
    # the report exists and carries counts, not identifiers; nothing in the work folder is patient data in clear
    html = (s.month_dir(SEPT) / "report.html").read_text()
    assert "<svg" in html and ndop_number not in html and "Synthetic Talking Therapies (ZZZ01)" in html
    for f in s.work_dir.rglob("*"):
        if f.is_file() and not f.name.endswith(".enc"):
            assert f.name in {"report.html", "figures.csv", "quarantine.csv", "optout_statement.json"}, f
            assert ndop_number not in f.read_text()


def test_encryption_round_trip_and_tamper_detection():
    key = load_key(new_key())
    blob = encrypt(b"data", key)
    assert decrypt(blob, key) == b"data"
    with pytest.raises(InvalidTag):
        decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), key)


def test_unsupported_version_is_refused():
    with pytest.raises(ValueError):
        build(SourceMonth(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame()), SEPT, version="1.5")


def test_values_the_column_type_cannot_hold_are_quarantined_not_fatal(tmp_path):
    """A loosely typed (SQLite) source can hold text in DATE / DATETIME / INTEGER columns (reliability finding 7)."""
    import sqlite3

    engine = _records_db(tmp_path)
    with engine.begin() as conn:
        conn.execute(insert(schema.patient), [{"local_patient_id": "P2", "nhs_number": "9990000026",
                                               "given_name": "C", "family_name": "D", "birth_date": dt.date(1991, 1, 1),
                                               "postcode": "LS1 1AB", "gender": "1", "ethnic_category": "A",
                                               "copy_channel": "post", "gp_sharing_consent": True}])
        conn.execute(insert(schema.referral), [{"service_request_id": "R2", "local_patient_id": "P2",
                                                "source_of_referral": "B1", "commissioner_code": "ZC1",
                                                "received_date": dt.date(2026, 4, 1)}])
        conn.execute(insert(schema.coded_assessment), [
            {"assessment_id": "A-OK", "service_request_id": "R1", "care_contact_id": "C-JUN",
             "tool_code": "720433000", "score": 12, "assessed_at": dt.datetime(2026, 5, 31, 23, 30)},
            {"assessment_id": "A-TEXT", "service_request_id": "R1", "care_contact_id": "C-JUN",
             "tool_code": "445455005", "score": 0, "assessed_at": dt.datetime(2026, 5, 31, 23, 30)}])
    raw = sqlite3.connect(tmp_path / "records.db")
    raw.execute("UPDATE patient SET birth_date = 'not a date' WHERE local_patient_id = 'P2'")
    raw.execute("UPDATE coded_assessment SET score = 'twelve' WHERE assessment_id = 'A-TEXT'")
    raw.execute("UPDATE care_contact SET contact_at = '2026-06-31 25:00:00' WHERE care_contact_id = 'C-MAY'")
    raw.commit()
    raw.close()
    june = Period.month(2026, 6)
    ds = build(read_source(engine, june), june)
    res = rules.screen(ds)
    q = {(x.reason_code, x.record_id) for x in res.quarantined}
    assert ("IDSREJ008", "PersonBirthDate", ("P2",)) in {(b.rule_code, b.column, b.record_ids) for b in res.blanked}
    mpi = ds.tables["IDS001MPI"]                          # unparseable birth date: blanked, the patient kept
    assert mpi.loc[mpi["LocalPatientId"] == "P2", "PersonBirthDate"].isna().all()
    assert ("IDS60706", "A-TEXT") in q                    # text score: incorrect format
    assert ds.tables["IDS607CodedScoreAssessmentAct"]["_rid"].tolist() == ["A-OK"]
    assert res.file_failures == []


def test_a_month_without_data_does_not_pass_for_a_submission(synth_source, state_engine, tmp_path):
    """A run that built nothing must say so (the synthetic service starts in April 2020), and write nothing: NHS
    England would reject an empty file anyway (IDSREJ003/004/005)."""
    empty = Period.month(2019, 6)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()))
    with pytest.raises(pipeline.EmptyMonth, match="2019-06 primary: the records source has no referral open in "
                                                  "the month; nothing was built"):
        pipeline.build_validate_write(synth_source.engine, state_engine, empty, s)
    assert state_tables.get(state_engine, "2019-06") is None
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
