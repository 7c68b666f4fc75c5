"""The synthetic generator: deterministic, plausible, and wrong in exactly the ways it says."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pytest
from caldicott.db import make_engine
from caldicott.records import checks, queries, schema, synth
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


# ---- the v2.1 data set's further facts (issue 12) --------------------------------------------------------------

V21_TABLES = ("accommodation_status", "employment_status", "disability", "social_circumstance", "overseas_visitor",
              "previous_diagnosis", "care_cluster", "care_personnel", "care_personnel_qualification",
              "onward_referral", "waiting_time_pause", "long_term_condition", "internet_therapy_log")
V21_KINDS = synth.BAD_KINDS[synth.BAD_KINDS.index("accommodation_ends_before_start"):]
DATASET_DIR = Path(synth.__file__).resolve().parents[1] / "dataset"


@pytest.fixture(scope="module")
def demo():
    """The demo's size and seed (devtools.bootstrap: 2,000 patients, seed 7)."""
    return synth.generate(2000, seed=7)


def _value_sets() -> dict[str, set[str]]:
    """Permitted codes by v2.0 rule code, from the data set's bundled copy of NHS England's value sets."""
    path = DATASET_DIR / "iapt_v2_0_value_sets.tsv"
    if not path.exists():
        pytest.skip("the data set's bundled value sets (include/caldicott/dataset/iapt_v2_0_value_sets.tsv) are absent")
    rows = csv.DictReader((line for line in path.open() if not line.startswith("#")), delimiter="\t")
    return {r["rule_code"]: set(r["permitted_values"].split("|")) for r in rows}


def _scales() -> dict[str, tuple[str, str]]:
    """SNOMED CT code -> (permitted, format) from the data set's bundled copy of the assessment scales."""
    path = DATASET_DIR / "iapt_assessment_scales.tsv"
    if not path.exists():
        pytest.skip("the data set's bundled scales (include/caldicott/dataset/iapt_assessment_scales.tsv) are absent")
    rows = csv.DictReader((line for line in path.open() if not line.startswith("#")), delimiter="\t")
    return {r["snomed_code"]: (r["permitted"], r["format"]) for r in rows}


def _good(frame: pd.DataFrame, id_col: str, bad: dict, *kinds: str) -> pd.DataFrame:
    spoilt = {i for k in kinds for i in bad[k]}
    return frame[~frame[id_col].isin(spoilt)]


def _verhoeff_ok(code: str) -> bool:
    """SNOMED CT concept ids end in a Verhoeff check digit: a guard against a mistyped code."""
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
         [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
         [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
    c = 0
    for i, ch in enumerate(reversed(code)):
        c = d[c][p[i % 8][int(ch)]]
    return code.isdigit() and 6 <= len(code) <= 18 and c == 0


def test_every_v21_table_and_column_is_filled_at_demo_size(demo):
    f = demo.frames
    for name in V21_TABLES:
        assert len(f[name]) > 0, name
        assert set(f[name].columns) == {c.name for c in schema.metadata.tables[name].columns}, name
    new_columns = {   # the columns commit 5fd7191 added to existing tables (certificates need a keys folder)
        "patient": ["gender_identity", "gender_same_at_birth", "ex_armed_forces", "preferred_language",
                    "education_establishment"],   # ethnic_category_2021: a pilot item the service does not record
        "referral": ["presenting_problem_significance", "onset_month", "previous_diagnosed_condition",
                     "risk_summary"],
        "care_contact": [c.name for c in schema.care_contact.columns][
            [c.name for c in schema.care_contact.columns].index("planned"):],
        "organisation": ["country", "channel", "mesh_mailbox", "mesh_workflow", "email", "connection_id",
                         "remote_path"],
    }
    for name, cols in new_columns.items():
        for col in cols:
            assert f[name][col].notna().any(), f"{name}.{col}"
    assert len(new_columns["care_contact"]) == 18
    assert f["coded_assessment"]["score_text"].notna().any()
    assert set(f["gp_practice"]["country"]) == {"GB"}


def test_shares_look_like_a_digital_talking_therapies_service(demo):
    f = demo.frames
    cc, ref, pat = f["care_contact"], f["referral"], f["patient"]
    treated = set(cc.loc[cc["app_type"] == "02", "service_request_id"])
    digital = set(f["internet_therapy_log"]["service_request_id"]) & treated
    assert 0.30 <= len(digital) / len(treated) <= 0.40
    with_programme = set(cc.loc[cc["digital_programme"].notna(), "service_request_id"])
    assert 0.25 <= len(with_programme) / len(treated) <= 0.40
    group = cc[cc["therapy_mode"] == "3"]
    assert len(group) and group["group_participants"].between(5, 14).all() and group["group_facilitators"].ge(1).all()
    assert cc.loc[cc["therapy_mode"] != "3", "group_participants"].isna().all()
    assert cc["interpreter_present"].notna().mean() > 0.02 and cc["treatment_language"].notna().any()
    assert (cc["planned"] == "N").any() and (cc["short_notice_cancellation"] == "Y").any()
    for col in ("procedure_code", "finding_code", "observation_code"):
        assert cc[col].notna().any(), col
    assert f["employment_status"]["local_patient_id"].nunique() / len(pat) > 0.8      # most patients
    assert 0.1 < f["disability"]["local_patient_id"].nunique() / len(pat) < 0.7
    assert 0 < f["overseas_visitor"]["local_patient_id"].nunique() / len(pat) < 0.03  # a few
    ltc = set(f["long_term_condition"]["service_request_id"])
    assert 0.15 < len(ltc) / len(ref) < 0.35
    assert (cc.loc[cc["service_request_id"].isin(ltc), "ltc_service"] == "Y").all()
    assert (cc.loc[~cc["service_request_id"].isin(ltc), "ltc_service"] == "N").all()
    assert 0 < len(f["care_cluster"]) / len(ref) < 0.1
    assert ref["onset_month"].dropna().str.fullmatch(r"\d{4}-\d{2}").all()
    assert set(ref["previous_diagnosed_condition"]) <= {"Y", "N", "U", "Z"}


def test_codes_are_in_nhs_englands_value_sets(demo):
    vs, f = _value_sets(), demo.frames
    bad = demo.bad
    checks = [
        ("patient", "ex_armed_forces", "IDS00160"), ("patient", "education_establishment", "IDS00158"),
        ("employment_status", "weekly_hours", "IDS00411"), ("employment_status", "self_employed", "IDS00414"),
        ("employment_status", "sickness_absence", "IDS00416"),
        ("employment_status", "statutory_sick_pay", "IDS00418"),
        ("employment_status", "benefit_receipt", "IDS00420"), ("employment_status", "esa", "IDS00424"),
        ("employment_status", "universal_credit", "IDS00426"), ("employment_status", "pip", "IDS00428"),
        ("employment_status", "employment_support", "IDS00432"),
        ("referral", "previous_diagnosed_condition", "IDS10134"),
        ("referral", "presenting_problem_significance", "IDS60312"),
        ("onward_referral", "reason", "IDS10507"), ("waiting_time_pause", "reason", "IDS10815"),
        ("care_contact", "planned", "IDS20151"), ("care_contact", "short_notice_cancellation", "IDS20153"),
        ("care_contact", "ltc_service", "IDS20117"), ("care_contact", "therapy_mode", "IDS20126"),
        ("care_contact", "psychotropic_medication", "IDS20161"), ("care_contact", "activity_location", "IDS20122"),
        ("care_contact", "interpreter_present", "IDS20165"), ("care_contact", "finding_scheme", "IDS20213"),
        ("internet_therapy_log", "integrated_software", "IDS20518"),
        ("previous_diagnosis", "scheme", "IDS60206"),   # DiagSchemeInUse: the same 01 / 04 as FindSchemeInUse
    ]
    for table, col, rule in checks:
        values = set(f[table][col].dropna().astype(str))
        assert values and values <= vs[rule], (table, col, values - vs[rule])
    spoilt = [("employment_status", "employment_status", "IDS00407", "employment_id", "employment_status_invalid_code"),
              ("disability", "disability_code", "IDS00707", "disability_id", "disability_code_invalid"),
              ("overseas_visitor", "charging_category", "IDS01207", "visitor_id", "overseas_visitor_invalid_category"),
              ("care_cluster", "cluster_code", "IDS80309", "cluster_id", "care_cluster_ends_before_start"),
              ("care_personnel_qualification", "level", "IDS90205", "qualification_id", "qualification_unknown_person"),
              ("long_term_condition", "scheme", "IDS60206", "condition_id", "ltc_invalid_scheme")]
    for table, col, rule, id_col, kind in spoilt:
        good = _good(f[table], id_col, bad, kind)
        assert set(good[col]) <= vs[rule], (table, col)
    from caldicott.dataset.value_sets import LANGUAGE_CODES
    assert set(f["patient"]["preferred_language"]) <= LANGUAGE_CODES
    assert set(f["care_contact"]["treatment_language"].dropna()) <= LANGUAGE_CODES
    # v2.1-only fields: the NHS Data Dictionary's codes (GENDER IDENTITY CODE, ... SAME AT BIRTH INDICATOR, ...)
    assert set(f["patient"]["gender_identity"].dropna()) <= set(synth.GENDER_IDENTITY)
    assert set(f["patient"]["gender_same_at_birth"].dropna()) <= set(synth.GENDER_SAME_AT_BIRTH)
    assert set(f["accommodation_status"]["settled"]) <= {"Y", "N", "Z"}
    programmes = set(_good(f["internet_therapy_log"], "log_id", bad, "internet_therapy_invalid_programme")["programme"])
    assert programmes <= set(synth.INTERNET_PROGRAMMES)
    assert set(f["care_contact"]["digital_programme"].dropna()) <= set(synth.INTERNET_PROGRAMMES)


def test_coded_entries_are_well_formed(demo):
    f, bad = demo.frames, demo.bad
    snomed = set(_good(f["social_circumstance"], "circumstance_id", bad, "circumstance_not_snomed")["snomed_code"])
    ltc = f["long_term_condition"]
    snomed |= set(ltc.loc[ltc["scheme"] == "04", "code"])
    dx = f["previous_diagnosis"]
    snomed |= set(dx.loc[dx["scheme"] == "04", "code"])
    cc = f["care_contact"]
    snomed |= set(cc["procedure_code"].dropna()) | set(cc["observation_code"].dropna())
    snomed |= set(cc.loc[cc["finding_scheme"] == "04", "finding_code"].dropna())
    snomed |= set(f["coded_assessment"]["tool_code"])
    assert snomed and all(_verhoeff_ok(c) for c in snomed), sorted(c for c in snomed if not _verhoeff_ok(c))
    icd = set(_good(dx, "diagnosis_id", bad, "previous_diagnosis_code_too_short").query("scheme == '01'")["code"])
    icd |= set(ltc.loc[ltc["scheme"] == "01", "code"]) | set(cc.loc[cc["finding_scheme"] == "01", "finding_code"])
    assert icd and all(re.fullmatch(r"[A-Z][0-9]{2}[0-9A-Z]{1,3}", c) for c in icd), icd
    obs = cc[cc["observation_code"].notna()]
    assert obs["observation_value"].astype(str).str.fullmatch(r"\d{2,3}").all()
    assert obs["observation_unit"].notna().all()


def test_scale_items_follow_nhs_englands_catalogue(demo):
    scales, ca, bad = _scales(), demo.frames["coded_assessment"], demo.bad
    good = ca[~ca["assessment_id"].isin(set(bad["scale_score_wrong_format"]) | set(bad["scale_score_out_of_range"])
                                        | set(bad["score_out_of_range"]))]
    assert set(good["tool_code"]) <= set(scales)
    for code, rows in good.groupby("tool_code"):
        permitted, fmt = scales[code]
        text = rows["score_text"].where(rows["score_text"].notna(), rows["score"].astype("string"))
        assert text.notna().all() and text.str.match(fmt).all(), code
        if permitted.startswith("in {"):
            assert set(text) <= set(permitted[4:-1].split(",")), code
        else:
            lo, hi = (float(x) for x in permitted.split(".."))
            assert text.astype(float).between(lo, hi).all(), code
    # PHQ-9, GAD-7 and WSAS stay integers in score (the letters read them as numbers)
    core = ca[ca["tool_code"].isin(set(SNOMED.values()))]
    assert core["score"].notna().all() and core["score_text"].isna().all()
    tools = set(ca["tool_code"])
    assert {"450326007", "445552006", "450324005"} <= tools            # PDSS, SPIN, OCI for some referrals
    peq = ca[ca["tool_code"] == "747861000000100"]
    assert len(peq) and peq["score"].isna().all() and set(peq["score_text"]) <= {"Y", "N"}


def test_dates_are_coherent(demo):
    f, bad = demo.frames, demo.bad
    ref = f["referral"].set_index("service_request_id")
    ref = ref[~ref.index.isin(bad["discharge_before_referral"])]
    received = pd.to_datetime(ref["received_date"])
    discharged = pd.to_datetime(ref["discharge_date"])
    end = pd.Timestamp("2026-10-31")

    def within_referral(frame: pd.DataFrame, lo_col: str, hi_col: str | None = None) -> None:
        frame = frame[frame["service_request_id"].isin(ref.index)]
        rid = frame["service_request_id"]
        lo = pd.to_datetime(frame[lo_col]).dt.normalize()
        hi = pd.to_datetime(frame[hi_col or lo_col]).dt.normalize()
        assert (lo >= rid.map(received)).all(), lo_col
        upper = rid.map(discharged).fillna(end)
        assert (hi.isna() | (hi <= upper)).all(), hi_col or lo_col

    pauses = _good(f["waiting_time_pause"], "pause_id", bad, "pause_ends_before_start")
    within_referral(pauses, "start_date", "end_date")
    assert (pd.to_datetime(pauses["end_date"]) >= pd.to_datetime(pauses["start_date"])).all()
    logs = _good(f["internet_therapy_log"], "log_id", bad, "internet_therapy_invalid_programme")
    within_referral(logs, "start_date", "end_date")
    log_end = pd.to_datetime(logs["end_date"])
    assert (log_end.isna() | (log_end >= pd.to_datetime(logs["start_date"]))).all()
    onward = f["onward_referral"][f["onward_referral"]["service_request_id"].isin(ref.index)]
    at = onward["referred_at"].dt.normalize()
    disch = onward["service_request_id"].map(discharged)
    assert disch.notna().all() and (disch - at).between(pd.Timedelta(0), pd.Timedelta(days=3)).all()
    clusters = _good(f["care_cluster"], "cluster_id", bad, "care_cluster_ends_before_start")
    assert (clusters["end_at"].isna() | (clusters["end_at"] > clusters["start_at"])).all()
    acc = _good(f["accommodation_status"], "accommodation_id", bad, "accommodation_ends_before_start")
    assert (acc["end_date"].isna() | (pd.to_datetime(acc["end_date"]) >= pd.to_datetime(acc["start_date"]))).all()
    assert (pd.to_datetime(acc["start_date"]) <= pd.to_datetime(acc["recorded_date"])).all()
    emp = f["employment_status"]
    sup = emp[emp["employment_support_discharge_date"].notna()]
    assert (pd.to_datetime(sup["employment_support_discharge_date"])
            > pd.to_datetime(sup["employment_support_referral_date"])).all()
    first = f["referral"].groupby("local_patient_id")["received_date"].min()
    dx = f["previous_diagnosis"]
    assert (pd.to_datetime(dx["diagnosis_date"]) < pd.to_datetime(dx["local_patient_id"].map(first))).all()


def test_onward_referrals_reach_providers_with_every_kind_of_channel(demo):
    f, bad = demo.frames, demo.bad
    orgs = f["organisation"].set_index("ods_code")
    onward = _good(f["onward_referral"], "onward_referral_id", bad, "onward_referral_unknown_org")
    receiving = orgs.loc[onward["receiving_org_code"].unique()]
    assert (receiving["kind"] == "provider").all()
    assert {"mesh", "smime-email", "sftp"} <= set(receiving["channel"].dropna())
    mesh = receiving[receiving["channel"] == "mesh"]
    assert mesh["mesh_mailbox"].notna().all() and (mesh["mesh_workflow"] == "GPFED_CONSULT_REPORT").all()
    sftp = receiving[receiving["channel"] == "sftp"]
    assert sftp["connection_id"].str.startswith("caldicott_provider_").all() and sftp["remote_path"].notna().all()
    assert receiving.loc[receiving["channel"] == "smime-email", "email"].notna().all()
    no_channel = receiving[receiving["channel"].isna()].index
    abroad = receiving[receiving["country"] != "GB"]
    assert len(no_channel) >= 1 and "US" in set(abroad["country"])
    assert set(orgs.loc[~orgs.index.isin(abroad.index), "country"]) == {"GB"}
    # each deliberate provider receives an onward referral in every month that has any
    month = onward["referred_at"].dt.to_period("M")
    for code in [no_channel[0], abroad.index[0]]:
        assert set(month[onward["receiving_org_code"] == code]) == set(month), code
    staff = set(f["care_personnel"]["care_pers_local_id"])
    assert set(onward["contact_care_pers_id"]) <= staff
    ref = f["referral"].set_index("service_request_id")
    referred_on = f["onward_referral"]["service_request_id"]
    assert ref.loc[referred_on.unique(), "risk_summary"].notna().all()
    assert ref.loc[~ref.index.isin(referred_on), "risk_summary"].isna().all()


def test_receiving_providers_have_certificates_when_keys_are_cached(tmp_path):
    orgs = synth.generate(60, seed=2, keys_dir=tmp_path).frames["organisation"]
    mail = orgs[orgs["channel"].isin(["smime-email", "sftp"])]
    assert len(mail) and mail["certificate_pem"].str.startswith("-----BEGIN CERTIFICATE-----").all()
    assert orgs.loc[orgs["channel"] == "mesh", "certificate_pem"].isna().all()


def test_care_personnel_cover_every_clinician(demo):
    f = demo.frames
    staff = f["care_personnel"]
    used = set(f["care_contact"]["clinician_id"]) | set(f["internet_therapy_log"]["care_pers_local_id"].dropna())
    assert used <= set(staff["care_pers_local_id"])
    named = staff[staff["display_name"] != ""]
    assert len(named) == len(staff) - 1
    assert {"Psychological wellbeing practitioner", "High intensity therapist"} <= set(staff["role"])
    assert staff["telephone"].str.fullmatch(r"0113 496 0\d{3}").all()              # Ofcom's drama range
    quals = f["care_personnel_qualification"]
    known = quals[quals["care_pers_local_id"].isin(staff["care_pers_local_id"])]
    assert set(staff["care_pers_local_id"]) <= set(known["care_pers_local_id"])    # everyone holds one
    assert (known["awarded_date"].notna() ^ known["planned_completion_date"].notna()).all()


def test_every_v21_fault_is_present_listed_and_what_it_says(demo):
    f, bad = demo.frames, demo.bad
    assert all(bad[k] for k in V21_KINDS), {k: len(bad[k]) for k in V21_KINDS}
    assert set(demo.manifest()["bad"]) == set(synth.BAD_KINDS)

    def rows(table: str, id_col: str, kind: str) -> pd.DataFrame:
        got = f[table].set_index(id_col).loc[bad[kind]]
        assert len(got) == len(bad[kind])
        return got

    r = rows("accommodation_status", "accommodation_id", "accommodation_ends_before_start")
    assert (pd.to_datetime(r["end_date"]) < pd.to_datetime(r["start_date"])).all()
    r = rows("employment_status", "employment_id", "employment_status_invalid_code")
    assert (r["employment_status"] == "10").all()
    assert (rows("disability", "disability_id", "disability_code_invalid")["disability_code"] == "11").all()
    r = rows("social_circumstance", "circumstance_id", "circumstance_not_snomed")
    assert not r["snomed_code"].str.isdigit().any()
    r = rows("overseas_visitor", "visitor_id", "overseas_visitor_invalid_category")
    assert (r["charging_category"] == "G").all()
    r = rows("previous_diagnosis", "diagnosis_id", "previous_diagnosis_code_too_short")
    assert (r["code"].str.len() == 3).all() and (r["scheme"] == "01").all()
    r = rows("care_cluster", "cluster_id", "care_cluster_ends_before_start")
    assert (r["end_at"] < r["start_at"]).all()
    assert (rows("care_personnel", "care_pers_local_id", "care_personnel_blank_name")["display_name"] == "").all()
    r = rows("care_personnel_qualification", "qualification_id", "qualification_unknown_person")
    assert not r["care_pers_local_id"].isin(f["care_personnel"]["care_pers_local_id"]).any()
    r = rows("onward_referral", "onward_referral_id", "onward_referral_unknown_org")
    assert not r["receiving_org_code"].isin(f["organisation"]["ods_code"]).any()
    r = rows("waiting_time_pause", "pause_id", "pause_ends_before_start")
    assert (pd.to_datetime(r["end_date"]) < pd.to_datetime(r["start_date"])).all()
    assert (rows("long_term_condition", "condition_id", "ltc_invalid_scheme")["scheme"] == "02").all()
    r = rows("internet_therapy_log", "log_id", "internet_therapy_invalid_programme")
    assert not r["programme"].isin(synth.INTERNET_PROGRAMMES).any()
    r = rows("coded_assessment", "assessment_id", "scale_score_wrong_format")
    assert r["score"].isna().all() and (r["score_text"] == "abc").all()
    r = rows("coded_assessment", "assessment_id", "scale_score_out_of_range")
    his = {code: hi for code, _lo, hi in synth.ADSM.values()}
    assert (r["score"].astype(int) > r["tool_code"].map(his)).all()
    # the records checks (records_quality) see none of the scale faults as PHQ/GAD/WSAS ones: their counts stay exact
    found = {q.record_id for q in checks.score_problems(f["coded_assessment"])}
    assert not set(bad["scale_score_out_of_range"]) & found


def test_v21_facts_are_deterministic_and_leave_the_older_records_alone(demo):
    again = synth.generate(2000, seed=7)
    for name in (*V21_TABLES, "organisation", "care_contact", "coded_assessment"):
        pd.testing.assert_frame_equal(demo.frames[name], again.frames[name], check_dtype=False)
    assert demo.bad == again.bad
    other = synth.generate(2000, seed=8)
    assert not other.frames["internet_therapy_log"].equals(demo.frames["internet_therapy_log"])


def test_written_source_holds_the_v21_tables(tmp_path, small):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    synth.write(small, engine)
    ro = make_engine(f"sqlite:///{tmp_path / 'r.db'}", readonly=True)
    for name in V21_TABLES:
        assert len(queries.table(ro, name)) == len(small.frames[name]), name
    cc = queries.table(ro, "care_contact", ["care_contact_id", "digital_programme", "group_participants"])
    assert cc["digital_programme"].notna().sum() == small.frames["care_contact"]["digital_programme"].notna().sum()
    ca = queries.table(ro, "coded_assessment", ["assessment_id", "score", "score_text"])
    assert ca["score_text"].notna().sum() == small.frames["coded_assessment"]["score_text"].notna().sum()
    orgs = queries.table(ro, "organisation", ["ods_code", "country"])
    assert orgs["country"].notna().all()
