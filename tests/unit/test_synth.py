"""The synthetic generator: deterministic, plausible, and wrong in exactly the ways it says."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from caldicott.db import make_engine
from caldicott.records import queries, schema, synth
from caldicott.records.nhs_numbers import valid_mask
from caldicott.records.schema import SNOMED


@pytest.fixture(scope="module")
def small():
    return synth.generate(1500, seed=3)


def test_same_seed_same_records(small):
    again = synth.generate(1500, seed=3)
    for name, frame in small.frames.items():
        pd.testing.assert_frame_equal(frame, again.frames[name], check_dtype=False)
    other = synth.generate(1500, seed=4)
    assert not other.frames["patient"]["nhs_number"].equals(small.frames["patient"]["nhs_number"])


def test_distributions_look_like_a_talking_therapies_service(small):
    ref = small.frames["referral"]
    share = ref["source_of_referral"].value_counts(normalize=True)
    assert share[synth.SOURCE_SELF] + share[synth.SOURCE_GP] > 0.8   # most from self or GP
    cc = small.frames["care_contact"]
    treated = cc[cc["app_type"] == "02"].groupby("service_request_id").size()
    assert 5 <= treated.median() <= 8                                # 6-8 sessions typical
    phq = small.frames["coded_assessment"]
    phq = phq[phq["tool_code"] == SNOMED["PHQ9"]].sort_values("assessed_at")
    by_ref = phq.groupby("service_request_id")["score"].agg(["first", "last", "size"])
    by_ref = by_ref[by_ref["size"] >= 4]
    improved = ((by_ref["first"] - by_ref["last"]) >= 6).mean()
    assert 0.3 <= improved <= 0.7                                     # about half improve reliably
    nhs = small.frames["patient"]["nhs_number"]
    good = nhs[valid_mask(nhs)]
    assert good.str.startswith("999").all()                          # synthetic range only


def test_every_kind_of_bad_record_is_present_and_named(small):
    bad, f = small.bad, small.frames
    assert all(bad[k] for k in synth.BAD_KINDS), {k: len(v) for k, v in bad.items()}
    pat = f["patient"].set_index("local_patient_id")
    assert not valid_mask(pat.loc[bad["invalid_nhs_number"], "nhs_number"]).any()
    assert not pat.loc[bad["postcode_without_space"], "postcode"].str.contains(" ").any()
    assert pat.loc[bad["missing_gp_practice"], "gp_practice_code"].isna().all()
    dups = pat.loc[bad["duplicate_nhs_number"], "nhs_number"]
    assert dups.duplicated(keep=False).all()
    ref = f["referral"].set_index("service_request_id")
    r = ref.loc[bad["discharge_before_referral"]]
    assert (pd.to_datetime(r["discharge_date"]) < pd.to_datetime(r["received_date"])).all()
    assert (f["coded_assessment"].set_index("assessment_id").loc[bad["score_out_of_range"], "score"] > 27).all()
    practices = f["gp_practice"].set_index("ods_code")
    assert practices.loc[bad["practice_unknown_channel"][0], "channel"] not in ("smime-email", "mesh")


def test_hostile_but_legitimate_names_are_kept_literally(small):
    names = set(small.frames["patient"]["family_name"]) | set(small.frames["patient"]["given_name"])
    assert "O'Brien" in names and "Zoë" in names


def test_written_source_round_trips_through_sqlalchemy(tmp_path, small):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    synth.write(small, engine, manifest_path=tmp_path / "m.json")
    ro = make_engine(f"sqlite:///{tmp_path / 'r.db'}", readonly=True)
    assert len(queries.table(ro, "patient")) == 1500
    got = queries.referrals_received(ro, dt.date(2026, 1, 1), dt.date(2026, 2, 1))
    expect = small.frames["referral"]
    expect = expect[(expect["received_date"] >= "2026-01-01") & (expect["received_date"] < "2026-02-01")]
    assert len(got) == len(expect) > 0
    with pytest.raises(Exception, match=r"readonly|read-only"), ro.begin() as conn:
        conn.execute(schema.patient.delete())


@pytest.mark.postgres
def test_written_source_works_on_postgresql(pg_url, small):
    engine = make_engine(pg_url)
    synth.write(small, engine)
    assert len(queries.table(engine, "care_contact")) == len(small.frames["care_contact"])
    got = queries.contacts_between(engine, dt.datetime(2026, 3, 1), dt.datetime(2026, 4, 1))
    cc = small.frames["care_contact"]
    assert len(got) == ((cc["contact_at"] >= "2026-03-01") & (cc["contact_at"] < "2026-04-01")).sum()
    pat = queries.patients(engine, ["P0000001", "P0000002"])
    assert set(pat["local_patient_id"]) == {"P0000001", "P0000002"}
    engine.dispose()


def test_a_fixed_minority_of_contracts_have_fhir_session_files(small):
    """Every source delivers at least one fhir-r4-v1 contract (the demo's three: CT002, SFTP, no summaries) and
    mostly csv-v1; the choice is by position, so the same records come out whatever the formats."""
    from caldicott.policy.referrer_updates import COLUMN_SET, FHIR_FORMAT, session_fields
    from caldicott.updates.build import contract_options

    contracts = small.frames["contract"].set_index("contract_id")
    assert contracts["file_format"].to_dict() == {"CT001": COLUMN_SET, "CT002": FHIR_FORMAT, "CT003": COLUMN_SET}
    assert contracts.loc["CT002", "transport"] == "sftp" and not contracts.loc["CT002", "include_summaries"]
    for record in small.frames["contract"].to_dict("records"):
        session_fields(contract_options(record))       # every generated format is one the flow can build

    big = synth.generate(35_000, seed=3).frames["contract"]
    fhir = big[big["file_format"] == FHIR_FORMAT]
    assert fhir["contract_id"].tolist() == ["CT002", "CT007"] and len(fhir) < len(big) / 2
    assert set(fhir["include_summaries"]) == {True, False}   # FHIR both with and without clinical summaries
    assert set(big["file_format"]) == {COLUMN_SET, FHIR_FORMAT}
