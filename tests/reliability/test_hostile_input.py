"""Bad input (issue 8, part 4): hostile records through every flow's planning / building step.

A small synthetic service (``caldicott.records.synth.generate``) is written to a fresh records database
with hostile values patched in by hypothesis, then pushed through

* GP letters: ``flow.plan`` and ``flow.send_batch`` for every batch (rendering, S/MIME, GP Connect
  bundles, print files) into a recording sender (the real peers are covered by the crash and fault tests);
* referrer updates: ``deliver.build_items`` for every contract (csv-v1 and fhir-r4-v1 files, read back and
  compared);
* the monthly data set: ``pipeline.build_month`` and ``rules.screen``.

Two kinds of hostility. *Bad records* (garbage / wrong-check-digit / duplicated NHS numbers, birth dates in
the future or before 1900, postcodes that are not postcodes, out-of-range scores, discharge before
referral) must be quarantined, with a reason, by each flow that reads them. *Hostile but valid text*
(unicode, control characters, SQL and template injection strings, HTML, 100 kB free text) in names,
addresses, plans, recommendations and session notes must not crash anything, must not be evaluated, and
must not stop the record: every good record is still planned and delivered / built.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import numpy as np
import pandas as pd
import pytest
from caldicott.crypto.keys import cached_identity
from caldicott.dataset import pipeline, rules
from caldicott.dataset.builder import Period
from caldicott.db import make_engine, sqlite_url
from caldicott.letters import flow
from caldicott.letters.build import find_events
from caldicott.records import synth
from caldicott.records.schema import SNOMED
from caldicott.state.migrate import migrate
from caldicott.state.quarantine import entries
from caldicott.transport.base import Outbound
from caldicott.updates import build as ubuild
from caldicott.updates import deliver, fhir
from caldicott.updates.free_text import clean_text
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devtools.airflow_env import DEMO_FHIR_NAMESPACE
from devtools.demo_service import demo_service
from tests.recorder import Recorder

from .conftest import figure

OCT = (dt.date(2026, 10, 1), dt.date(2026, 11, 1))
RUN = "2026-10"
BIG = "Ω≈ç√∫ {{ 7*7 }} '; DROP TABLE patient; -- \x07 " * 2000  # ~100 kB

HOSTILE_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60),
    st.sampled_from([
        "'; DROP TABLE patient; --", "Robert'); DELETE FROM referral;--", "{{ 7*7 }}",
        "{% for x in range(9) %}x{% endfor %}",
        "${7*7}", "<script>alert(1)</script>", "&lt;b&gt; & <b>bold</b>", "\x00\x01\x1b[31mred\x1b[0m", "line\r\nbreak",
        "\uff21\uff22\uff23\uff11 \uff12\uff24\uff25", "Zoë Ní Bhriain-O'Brien", "مرحبا بالعالم", "😀🏥💊",
        "\u202eevil\u202c", "=HYPERLINK(\"x\")",
        " ", "",
    ]),
)
FAULTS = ("nhs_garbage", "nhs_check_digit", "nhs_duplicate", "birth_future", "birth_ancient", "postcode_garbage",
          "score_out_of_range", "discharge_before_referral")
#: patient fault -> (the IDS001 field it spoils, the rule that blanks it)
PATIENT_FAULT_FIELD = {"nhs_garbage": ("NHSNumber", "IDSREJ006"), "nhs_check_digit": ("NHSNumber", "IDSREJ006"),
                       "nhs_duplicate": ("NHSNumber", "IDSREJ009"), "birth_future": ("PersonBirthDate", "IDSREJ008"),
                       "birth_ancient": ("PersonBirthDate", "IDSREJ008"), "postcode_garbage": ("Postcode", "IDSREJ007")}
PATIENT_FAULTS = {"nhs_garbage", "nhs_check_digit", "nhs_duplicate", "birth_future", "birth_ancient",
                  "postcode_garbage"}


@pytest.fixture(scope="module", autouse=True)
def _fhir_namespace():
    """The demo's ``CALDICOTT_FHIR_NAMESPACE`` (no production default: without one fhir-r4-v1 files are held, not
    built). Module-scoped: hypothesis refuses function-scoped fixtures such as ``monkeypatch`` in a @given test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CALDICOTT_FHIR_NAMESPACE", DEMO_FHIR_NAMESPACE)
        yield


@pytest.fixture(scope="module")
def base(synth_source, tmp_path_factory):
    """A small service dense in October 2026, with its letter events and in-scope patients worked out once."""
    result = synth.generate(90, 23, start=dt.date(2025, 10, 1), end=dt.date(2026, 10, 31),
                            keys_dir=synth_source.keys_dir, bad_share=0.0)
    root = tmp_path_factory.mktemp("hostile-base")
    engine = make_engine(sqlite_url(root / "records.db"))
    # route some October referrals to a contracted provider, so referrer updates see them
    ref = result.frames["referral"]
    synth.write(result, engine)
    events = find_events(engine, *OCT)
    ev_refs = sorted({r for r, _, _ in events})
    to_provider = ev_refs[::2]
    ref.loc[ref["service_request_id"].isin(to_provider), ["referrer_org_code", "source_of_referral"]] = ["ZP000", "C1"]
    ref_by_id = ref.set_index("service_request_id")
    # the generator spoils one record of each kind on purpose (its manifest): those are not "good" here
    bad = result.bad
    base_bad = set()
    for kind in ("invalid_nhs_number", "postcode_without_space", "missing_gp_practice", "duplicate_nhs_number"):
        base_bad |= set(bad.get(kind, []))
    spoilt_refs = set(bad.get("discharge_before_referral", [])) | set(bad.get("unknown_referrer", []))
    cc, ca = result.frames["care_contact"], result.frames["coded_assessment"]
    spoilt_refs |= set(cc.loc[cc["care_contact_id"].isin(bad.get("contact_before_referral", [])), "service_request_id"])
    spoilt_refs |= set(ca.loc[ca["assessment_id"].isin(bad.get("score_out_of_range", [])), "service_request_id"])
    base_bad |= set(ref_by_id.loc[sorted(spoilt_refs & set(ref_by_id.index)), "local_patient_id"])
    in_scope = sorted({ref_by_id.loc[r, "local_patient_id"] for r in ev_refs} - base_bad)
    # patients never in October's flows: donors of duplicated NHS numbers
    active = set(ref.loc[ref["discharge_date"].isna() | (pd.to_datetime(ref["discharge_date"]) >= "2026-09-01"),
                         "local_patient_id"])
    outside = sorted(set(result.frames["patient"]["local_patient_id"]) - active - set(in_scope) - base_bad)
    print_cert = cached_identity(synth_source.keys_dir, "PRINTHOUSE").cert_pem.decode()
    engine.dispose()
    return {"result": result, "events": events, "in_scope": in_scope, "base_bad": base_bad, "outside": outside,
            "print_cert": print_cert,
            "keys": synth_source.keys_dir}


@st.composite
def hostile_case(draw, n_victims: int = 8):
    faults = draw(st.lists(st.sampled_from((*FAULTS, "none", "none")), min_size=n_victims, max_size=n_victims))
    texts = draw(st.lists(HOSTILE_TEXT, min_size=6, max_size=6))
    big = draw(st.booleans())
    garbage = draw(st.one_of(HOSTILE_TEXT, st.text("0123456789", min_size=1, max_size=12)))
    return faults, texts, big, garbage


def _bad_check_digit(n: str) -> str:
    return n[:9] + str((int(n[9]) + 1) % 10)


def _apply(base: dict, faults, texts, big, garbage) -> tuple[dict, dict[str, str], dict[str, str]]:
    """Patch a copy of the base frames; return frames, {patient id: fault}, {referral id: fault}."""
    frames = {k: v.copy() for k, v in base["result"].frames.items()}
    pat, ref, cc, ca = frames["patient"], frames["referral"], frames["care_contact"], frames["coded_assessment"]
    pidx = pat.set_index("local_patient_id")
    bad_pat: dict[str, str] = {}
    bad_ref: dict[str, str] = {}
    victims = base["in_scope"][: len(faults)]
    donors = iter(base["in_scope"][len(faults):])  # in the same month: a duplicate inside the data set file
    for pid, fault in zip(victims, faults, strict=False):
        row = pidx.index.get_loc(pid)
        refs = ref.index[ref["local_patient_id"] == pid]
        if fault == "nhs_garbage":
            pat.iat[row, pat.columns.get_loc("nhs_number")] = garbage[:10] if garbage else None
        elif fault == "nhs_check_digit":
            pat.iat[row, pat.columns.get_loc("nhs_number")] = _bad_check_digit(str(pat.iat[row, 1]))
        elif fault == "nhs_duplicate":
            donor = next(donors)
            pat.iat[row, pat.columns.get_loc("nhs_number")] = pidx.loc[donor, "nhs_number"]
            bad_pat[donor] = "nhs_duplicate"
        elif fault == "birth_future":
            pat.iat[row, pat.columns.get_loc("birth_date")] = np.datetime64("2099-01-01")
        elif fault == "birth_ancient":
            pat.iat[row, pat.columns.get_loc("birth_date")] = np.datetime64("1850-02-28")
        elif fault == "postcode_garbage":
            pat.iat[row, pat.columns.get_loc("postcode")] = (garbage or "x")[:10]
        elif fault == "score_out_of_range":
            mine = (ca["service_request_id"].isin(ref.loc[refs, "service_request_id"])
                    & (ca["tool_code"] == SNOMED["PHQ9"]))
            if not mine.any():
                continue
            ca.loc[mine, "score"] = 99
            for rid in ref.loc[refs, "service_request_id"]:
                if (ca.loc[mine, "service_request_id"] == rid).any():
                    bad_ref[rid] = fault
            continue
        elif fault == "discharge_before_referral":
            done = [i for i in refs if pd.notna(ref.at[i, "discharge_date"])]
            if not done:
                continue
            for i in done:
                ref.at[i, "discharge_date"] = pd.Timestamp(ref.at[i, "received_date"]) - pd.Timedelta(days=5)
                bad_ref[ref.at[i, "service_request_id"]] = fault
            continue
        if fault != "none":
            bad_pat[pid] = fault
    # hostile but valid text on everyone in scope
    t = list(texts)
    scope = pat["local_patient_id"].isin(base["in_scope"])
    n = int(scope.sum())
    pat.loc[scope, "given_name"] = [t[i % 6][:100] or "A" for i in range(n)]
    pat.loc[scope, "family_name"] = [t[(i + 1) % 6][:100] or "B" for i in range(n)]
    pat.loc[scope, "address_line"] = [t[(i + 2) % 6][:200] or "1 Road" for i in range(n)]
    rs = ref["local_patient_id"].isin(base["in_scope"])
    m = int(rs.sum())
    ref.loc[rs, "assessment_plan"] = [(BIG if big and i == 0 else t[(i + 3) % 6]) for i in range(m)]
    ref.loc[rs, "discharge_recommendations"] = [t[(i + 4) % 6] for i in range(m)]
    ref.loc[rs, "presenting_problem"] = [t[(i + 5) % 6][:100] for i in range(m)]
    cs = cc["service_request_id"].isin(ref.loc[rs, "service_request_id"])
    cc.loc[cs, "clinical_summary"] = [(BIG if big and i == 0 else t[i % 6]) for i in range(int(cs.sum()))]
    return frames, bad_pat, bad_ref


def _write(frames, path):
    engine = make_engine(sqlite_url(path))
    synth.write(synth.SynthResult(frames=frames), engine)
    engine.dispose()
    return make_engine(sqlite_url(path), readonly=True)


# ---- one example through the three flows ---------------------------------------------------------

def _letters(records, state, base, bad_pat, bad_ref) -> int:
    planned = flow.plan(records, state, *OCT, RUN)
    q = entries(state, flow.FLOW, RUN)
    assert all(e.reason and e.reason_code for e in q)
    quarantined_pat = {e.record_id for e in q if e.record_type == "patient"}
    quarantined_ref = {e.record_id for e in q if e.record_type == "referral"}
    quarantined_prac = {e.record_id for e in q if e.record_type == "gp_practice"}
    practice_of = pd.read_sql("SELECT local_patient_id, gp_practice_code FROM patient", records).set_index(
        "local_patient_id")["gp_practice_code"]
    events = find_events(records, *OCT)
    refs = pd.read_sql("SELECT service_request_id, local_patient_id FROM referral", records).set_index(
        "service_request_id")["local_patient_id"]
    letter_faults = {"nhs_garbage", "nhs_check_digit", "nhs_duplicate"}
    for rid, event, _ in events:
        pid = refs[rid]
        if bad_pat.get(pid) in letter_faults:
            assert pid in quarantined_pat, (bad_pat[pid], "letters did not quarantine the patient")
        if bad_ref.get(rid) == "score_out_of_range" or (bad_ref.get(rid) == "discharge_before_referral"
                                                         and event == "discharge"):
            assert rid in quarantined_ref, (bad_ref[rid], "letters did not quarantine the referral")
    planned_ids = {flow.letter_id(r, e, b["kind"]) for b in planned["batches"] for r, e in b["letters"]}
    accounted = planned_ids | set(planned["held_ids"]) | set(planned["withheld_ids"])
    for rid, event, _ in events:
        pid = refs[rid]
        if pid in bad_pat or rid in bad_ref or pid in base["base_bad"]:
            continue
        gp = flow.letter_id(rid, event, "gp")
        assert gp in accounted or pid in quarantined_pat or practice_of[pid] in quarantined_prac, \
            "a good GP letter was neither planned nor explained"
    recorders = {c: Recorder(c) for c in ("smtp", "mesh", "post")}
    ch = flow.Channels(recorders, demo_service(), "letters@nhs.example", "X26ABC1", base["print_cert"])
    sent = 0
    for b in planned["batches"]:
        res = flow.send_batch(records, state, b, ch, *OCT)
        assert res["failed"] == 0 and res["refused"] == 0, res
        assert res["sent"] + res["already_sent"] == len(b["letters"]), res
        sent += res["sent"]
    assert sent == sum(len(r.items) for r in recorders.values())
    return sent


def _session_rows(item: Outbound, with_summaries: bool) -> list[dict]:
    """A built session file read back as rows (care_contact_id, and clinical_summary where the contract has it),
    whatever its format: csv-v1 as CSV; fhir-r4-v1 as a Bundle, one row per Encounter, its summary the text of
    the DocumentReference pointing at it (none: no summary)."""
    if item.headers["column_set"] != "fhir-r4-v1":
        return list(csv.DictReader(io.StringIO(item.payload.decode("utf-8"), newline="")))
    bundle = json.loads(item.payload)
    rows = {e["id"]: {"care_contact_id": e["identifier"][0]["value"], **({"clinical_summary": ""}
                                                                          if with_summaries else {})}
            for e in fhir.resources(bundle, "Encounter")}
    for d in fhir.resources(bundle, "DocumentReference"):
        rows[d["context"]["encounter"][0]["reference"].removeprefix("urn:uuid:")]["clinical_summary"] = \
            fhir.summary_text(d)
    return list(rows.values())


def _updates(records, state, bad_pat) -> int:
    contracts = ubuild.active_contracts(records)
    built = 0
    for cid in contracts["contract_id"]:
        contract = deliver.load_contract(records, cid)
        items, result, held, _ = deliver.build_items(records, state, contract, *OCT, RUN,
                                                     activity_month=dt.date(2026, 10, 1))
        for item in items:
            if item.item_id in held or item.headers["kind"] != "sessions":
                continue
            rows = _session_rows(item, bool(contract["include_summaries"]))
            assert len(rows) == result.rows["sessions"]
            built += len(rows)
            sessions = pd.read_sql(
                "SELECT c.care_contact_id, c.clinical_summary, r.local_patient_id FROM care_contact c "
                "JOIN referral r USING (service_request_id) WHERE r.referrer_org_code = ?", records,
                params=(contract["referrer_org_code"],)).set_index("care_contact_id")
            for row in rows:
                pid = sessions.loc[row["care_contact_id"], "local_patient_id"]
                assert bad_pat.get(pid) not in ("nhs_garbage", "nhs_check_digit"), "a bad NHS number left"
                if "clinical_summary" in row:   # hostile text travels unevaluated: exactly as stored, less the
                    # control and bidi characters free_text removes (and counts) before anything leaves
                    want = clean_text(sessions.loc[row["care_contact_id"], "clinical_summary"] or "")[0]
                    assert row["clinical_summary"] == want
    q = entries(state, "referrer_updates", RUN)
    assert all(e.reason and e.reason_code for e in q)
    return built


def _dataset(records, state, base, bad_pat, bad_ref, tmp) -> int:
    period = Period.month(2026, 10)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp, key=bytes(32))
    ds, _, _ = pipeline.build_month(records, period, s)
    mpi_frame = ds.tables["IDS001MPI"].set_index("_rid")
    mpi_before = set(mpi_frame.index)
    refs_before = set(ds.tables["IDS101Referral"]["_rid"])
    res = rules.screen(ds)
    assert not res.file_failures, res.file_failures
    assert all(q.reason and q.reason_code for q in res.quarantined + res.blanked_items)
    mpi_after_frame = ds.tables["IDS001MPI"].set_index("_rid")
    mpi_after = set(mpi_after_frame.index)
    refs_after = set(ds.tables["IDS101Referral"]["_rid"])
    blanked = {(q.record_id, q.reason_code) for q in res.blanked_items}
    for pid, fault in bad_pat.items():
        if pid in mpi_before:
            # nationally a blank NHS number, birth date or postcode is only a warning: the patient is submitted with
            # the bad field blanked (and reported with the rule's code), not dropped from a mandated return
            assert pid in mpi_after, (fault, "a patient with one bad optional field was dropped")
            col, code = PATIENT_FAULT_FIELD[fault]
            assert pd.isna(mpi_after_frame.at[pid, col]), (fault, "the bad value was submitted")
            was = mpi_frame.at[pid, col]
            if pd.notna(was) and str(was).strip():
                assert (pid, code) in blanked, (fault, "a blanked field was not reported")
    for rid, fault in bad_ref.items():
        if fault == "discharge_before_referral" and rid in refs_before:
            assert rid not in refs_after, (fault, "a referral discharged before receipt stayed in the data set")
    # a PHQ-9 score out of its range is a warning nationally (IDS60607 / IDS60707): submitted, and counted
    for table, code in (("IDS606CodedScoreAssessmentRefer", "IDS60607"), ("IDS607CodedScoreAssessmentAct", "IDS60707")):
        if table in ds.tables and len(ds.tables[table]):
            df = ds.tables[table]
            phq9 = df["CodedAssToolType"] == SNOMED["PHQ9"]
            high = df[phq9 & (pd.to_numeric(df["PersScore"], errors="coerce") > 27)]
            if table == "IDS606CodedScoreAssessmentRefer":
                assert set(high["ServiceRequestId"]) <= {r for r, f in bad_ref.items() if f == "score_out_of_range"}
            assert res.failures.get(code, 0) >= len(high), table
    owners = set(pd.read_sql("SELECT service_request_id, local_patient_id FROM referral", records)
                 .set_index("service_request_id").loc[list(bad_ref), "local_patient_id"]) if bad_ref else set()
    good = mpi_before - set(bad_pat) - owners - base["base_bad"]
    dropped = good - mpi_after
    why = [(q.record_type, q.record_id, q.reason_code) for q in res.quarantined]
    assert not dropped, ("a good patient was dropped from the data set", sorted(dropped), why, bad_pat, bad_ref)
    return len(good)


TRIED = {"examples": 0, "hostile values": 0}


@settings(max_examples=5, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=hostile_case())
def test_hostile_records_through_every_flow(case, base, tmp_path_factory):
    faults, texts, big, garbage = case
    tmp = tmp_path_factory.mktemp("hostile")
    frames, bad_pat, bad_ref = _apply(base, faults, texts, big, garbage)
    records = _write(frames, tmp / "records.db")
    state = make_engine(sqlite_url(tmp / "state.db"))
    migrate(state)
    letters = _letters(records, state, base, bad_pat, bad_ref)
    rows = _updates(records, state, bad_pat)
    kept = _dataset(records, state, base, bad_pat, bad_ref, tmp / "work")
    # what the flows wrote about the bad records names rules and opaque ids, never the hostile values
    with state.connect() as conn:
        said = [" ".join(str(v) for v in r) for r in conn.exec_driver_sql(
            "SELECT record_id, reason_code, reason FROM quarantine UNION ALL "
            "SELECT item_id, state, COALESCE(detail, '') FROM delivery_ledger")]
    # only distinctive values: a short or plain alphanumeric string could match a rule's wording or a hash
    values = [v for v in (*texts, garbage) if (len(v.strip()) >= 6 and not v.replace(" ", "").isascii())
              or (len(v) >= 6 and any(c in v for c in "'{}<>;$="))]
    leaks = sum(1 for v in values if any(v in line for line in said))
    figure("leaks found in quarantine / ledger text", leaks)
    assert leaks == 0, "a hostile value was copied into the quarantine or the ledger"
    records.dispose()
    state.dispose()
    n_bad = len(bad_pat) + len(bad_ref)
    TRIED["examples"] += 1
    TRIED["hostile values"] += n_bad + len(texts) + (1 if big else 0)
    figure("hostile examples tried")
    figure("hostile values tried", n_bad + len(texts) + (1 if big else 0))
    figure("bad records injected (each quarantined by every flow that reads it)", n_bad)
    print(f"hostile example: {n_bad} bad records, {len(texts)} hostile texts{' + 100 kB' if big else ''}: "
          f"{letters} letters sent, {rows} session rows built, {kept} good patients kept in the data set")


# ---- values the column's type cannot hold ------------------------------------------------------------

#: A SQLite source (the demo's) can hold an impossible date or text in an integer column; PostgreSQL would have
#: refused them at the door. Each flow that reads the cell quarantines the record holding it (letters: the
#: patient or referral; updates: the session; the data set: its rule code) and carries on with the rest.
RAW = {
    "birth_date": ("UPDATE patient SET birth_date = '2026-02-30' WHERE local_patient_id = :pid", "patient"),
    "birth_text": ("UPDATE patient SET birth_date = 'not a date' WHERE local_patient_id = :pid", "patient"),
    "contact_at": ("UPDATE care_contact SET contact_at = '2026-10-32 10:00:00.000000' WHERE service_request_id = :rid",
                   "referral"),
    "score_text": ("UPDATE coded_assessment SET score = 'abc' WHERE service_request_id = :rid", "referral"),
}


@pytest.mark.parametrize("field", sorted(RAW))
def test_values_the_column_type_cannot_hold(field, base, tmp_path):
    import sqlalchemy as sa
    from caldicott.records.quality import scan

    rid = next(r for r, e, _ in base["events"]
               if e == "discharge" and base["result"].frames["referral"].set_index("service_request_id").at[
                   r, "referrer_org_code"] == "ZP000")
    pid = base["result"].frames["referral"].set_index("service_request_id").at[rid, "local_patient_id"]
    records = _write(base["result"].frames, tmp_path / "records.db")
    raw = make_engine(sqlite_url(tmp_path / "records.db"))
    sql, letter_record = RAW[field]
    with raw.begin() as conn:
        changed = conn.execute(sa.text(sql), {"pid": pid, "rid": rid}).rowcount
    raw.dispose()
    assert changed
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)

    # letters: the letter about this referral is quarantined with a reason; every other letter still planned
    planned = flow.plan(records, state, *OCT, RUN)
    q = [e for e in entries(state, flow.FLOW, RUN) if e.reason_code == "unreadable_value"]
    want = pid if letter_record == "patient" else rid
    assert [(e.record_type, e.record_id) for e in q] == [(letter_record, want)], q
    planned_refs = {r for b in planned["batches"] for r, _ in b["letters"]}
    assert rid not in planned_refs
    assert len(planned_refs) > 10, "the good letters were not planned"

    # referrer updates: the session holding the bad instant is quarantined, the contract's other sessions go
    for c in ubuild.active_contracts(records)["contract_id"]:
        deliver.build_items(records, state, deliver.load_contract(records, c), *OCT, RUN)
    upd = [e for e in entries(state, "referrer_updates", RUN) if e.reason_code == "unreadable_value"]
    if field == "contact_at":
        assert upd and all(e.record_type == "care_contact" for e in upd), upd

    # the data set quarantines it under a rule code (or leaves it out of the period) and builds the rest
    ds = pipeline.build_month(records, Period.month(2026, 10), pipeline.Settings(
        org_provider="ZZZ01", work_dir=tmp_path, key=bytes(32)))[0]
    res = rules.screen(ds)
    assert not res.file_failures

    # and the data-quality scan names it
    counts = scan(records, state, "quality-" + field)
    assert counts["by_reason"].get("unreadable_value", 0) >= 1, counts
    figure("hostile values tried", 1)
    figure("values the column type cannot hold, quarantined by every flow that reads them", 1)
