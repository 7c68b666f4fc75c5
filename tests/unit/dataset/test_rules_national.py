"""NHS England's rules, table-driven from the reference files (not from each rule's own breaker).

Value sets from ``iapt_v2_0_value_sets.tsv``, scales from ``iapt_assessment_scales.tsv``, blank and format rules
from the catalogue's messages matched to the fields' Data Dictionary names in ``iapt_v2_1_fields.tsv``; each case
changes row 0 of the valid 21-table data set (tests/unit/dataset/factory.py) and expects exactly that rule's code.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from caldicott.dataset import rules, scales, value_sets
from caldicott.policy import dataset as policy

from tests.unit.dataset import factory

REF = Path("/work/shared/reference")
HERE = Path(rules.__file__).parent


def _tsv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader((ln for ln in fh if not ln.startswith("#")), delimiter="\t"))


ALL_VALUE_SETS = _tsv(HERE / "iapt_v2_0_value_sets.tsv")
SCALES = _tsv(HERE / "iapt_assessment_scales.tsv")
RENAMED = {"SourceOfReferralMH": "SourceOfReferralIAPT", "ConsMediumUsed": "ConsMechanism"}
#: the value-set rules on fields a v2.1 file holds (JSAInd and OtherBenefitInd left v2.1: rules.NOT_IMPLEMENTED)
VALUE_SETS = [r for r in ALL_VALUE_SETS if RENAMED.get(r["field"], r["field"]) in rules.NATIONAL_FIELDS[r["table"]]]


def _set(ds, table: str, col: str, value, row: int = 0) -> None:
    df = ds.tables[table]
    if df[col].dtype.kind == "M":
        s = df[col].astype(object)
        s.iloc[row] = value
        df[col] = pd.to_datetime(s, errors="coerce").astype("datetime64[s]")
    elif str(df[col].dtype) == "Int64":
        s = df[col].astype(object)
        s.iloc[row] = value
        df[col] = pd.to_numeric(s, errors="coerce").astype("Int64")
    else:
        s = df[col].astype(object)
        s.iloc[row] = value
        df[col] = s.astype("string[pyarrow]")


def _failing(ds, codes: list[str] | None = None) -> dict[str, np.ndarray]:
    return {c: m for c, m in rules.evaluate(ds, codes).items() if np.asarray(m).any()}


def test_bundled_reference_files_are_nhs_englands():
    if not REF.exists():
        pytest.skip("the shared reference folder is not on this machine")
    assert _tsv(REF / "iapt_v2_0_value_sets.tsv") == ALL_VALUE_SETS
    assert {r["rule_code"] for r in ALL_VALUE_SETS} - {r["rule_code"] for r in VALUE_SETS} <= set(rules.NOT_IMPLEMENTED)
    assert _tsv(REF / "iapt_assessment_scales.tsv") == SCALES


def test_the_valid_data_set_passes_every_rule():
    assert _failing(factory.dataset()) == {}


@pytest.mark.parametrize("row", VALUE_SETS, ids=lambda r: r["rule_code"])
def test_value_set_codes_pass_and_others_fail(row):
    code = row["rule_code"]
    field = RENAMED.get(row["field"], row["field"])
    permitted = value_sets.codes(code, "2.1")
    if code == "IDS20120":    # v2.1 CONSULTATION MECHANISM (MENTAL HEALTH), NHS Data Dictionary
        assert permitted == {"01", "02", "04", "05", "09", "10", "11", "12", "13", "98"}
    elif code == "IDS00003":
        assert permitted == {"2.1"} and value_sets.codes(code, "2.0") == {"2.0"}
    elif row["permitted_values"].startswith("ISO639"):
        assert {"en", "cy", "q1", "q5"} <= permitted and len(permitted) == 189
    else:
        assert permitted == set(row["permitted_values"].split("|"))
    for value in sorted(permitted):
        ds = factory.dataset()
        _set(ds, row["table"], field, value)
        assert code not in _failing(ds, [code]), value
    width = max(len(v) for v in permitted)
    wrong = next(v for v in ("@" * width, "#" * width, "~" * width) if v not in permitted)
    ds = factory.dataset()
    _set(ds, row["table"], field, wrong)
    got = _failing(ds, [code])
    assert list(np.flatnonzero(got[code])) == [0]
    rule = rules.REGISTRY[code]
    # a warning never removes anything; a reject-record code list on an optional field blanks it
    res = rules.screen(ds)
    if rule.severity == "WARNING":
        assert code not in {q.reason_code for q in res.quarantined} and code not in res.blanked_by_rule
    assert res.failures[code] == 1


@pytest.mark.parametrize("row", VALUE_SETS, ids=lambda r: r["rule_code"])
def test_a_null_passes_every_value_set_rule(row):
    ds = factory.dataset()
    _set(ds, row["table"], RENAMED.get(row["field"], row["field"]), None)
    assert row["rule_code"] not in _failing(ds, [row["rule_code"]])


def _score_cases(row: dict) -> tuple[list[str], list[str], list[str]]:
    """(in range, out of range but in format, not in format) for one item, from its reference row only."""
    permitted, fmt = row["permitted"], row["format"]
    if permitted.startswith("in {"):
        good = [v.strip() for v in permitted[4:-1].split(",")]
        out = [v for v in ("X", "Q") if v not in good]
        return good, out, ["1", "YES!"]
    lo, hi = (float(x) for x in permitted.split(".."))
    if "\\." in fmt:          # decimals: MI
        return [f"{lo:.1f}", f"{hi:.2f}"], [f"{hi + 1:.1f}"], [str(int(lo)), "1.234"]
    digits = int(fmt.split("{")[1].split("}")[0].split(",")[-1]) if "{" in fmt else 1
    out = [str(int(hi) + 1)] if len(str(int(hi) + 1)) <= digits else []
    if lo > 0:
        out.append(str(int(lo) - 1))
    return [str(int(lo)), str(int(hi))], out, ["1" * (digits + 1), "1.5"]


@pytest.mark.parametrize("table,codes", [("IDS606CodedScoreAssessmentRefer", ("IDS60607", "IDS60615")),
                                         ("IDS607CodedScoreAssessmentAct", ("IDS60707", "IDS60711"))])
@pytest.mark.parametrize("row", SCALES, ids=lambda r: r["snomed_code"])
def test_each_scale_item_has_its_own_range_and_format(row, table, codes):
    range_code, fmt_code = codes
    good, out, bad_fmt = _score_cases(row)
    assert row["snomed_code"] in scales.codes()
    for value, expect in [*((v, set()) for v in good), *((v, {range_code}) for v in out),
                          *((v, {fmt_code}) for v in bad_fmt)]:
        ds = factory.dataset()
        _set(ds, table, "CodedAssToolType", row["snomed_code"])
        _set(ds, table, "PersScore", value)
        got = set(_failing(ds, list(codes)))
        assert expect <= got and (not expect or fmt_code in expect or fmt_code not in got), (value, got)
        if expect == {range_code}:
            res = rules.screen(ds)        # out of range is a warning: the score stays
            assert range_code not in {q.reason_code for q in res.quarantined} and res.failures[range_code] >= 1


def test_wsas_item_932621000000100_allows_9_and_the_others_8():
    assert scales.in_range("932621000000100", "9") and not scales.in_range("932581000000100", "9")
    assert scales.in_range("473354003", "2.5") and not scales.format_ok("473354003", "2")
    assert scales.in_range("747881000000109", "NA") and not scales.in_range("747861000000100", "NA")


def test_an_icd10_code_needs_four_to_six_characters():
    for value, fails in [("F32", True), ("F32X", False), ("F411", False), ("F41.1", False), ("F41.10X", True)]:
        ds = factory.dataset()
        _set(ds, "IDS603PresentingComplaints", "PresComp", value)
        got = _failing(ds)
        assert ("IDS60310" in got) == fails, value
    ds = factory.dataset()
    _set(ds, "IDS603PresentingComplaints", "PresComp", "F32")
    res = rules.screen(ds)       # PresComp is mandatory (IDS60308 rejects a blank): the complaint record goes
    assert {"IDS60309", "IDS60310"} <= {q.reason_code for q in res.quarantined}
    assert "R2" in set(ds.tables["IDS101Referral"]["ServiceRequestId"])


FIELD_ROWS = _tsv(HERE / "iapt_v2_1_fields.tsv")


def _catalogue_field(code: str) -> tuple[str, str] | None:
    """(table, field) a "... is blank" / "... has incorrect data format" message names, by the field's Data
    Dictionary name in iapt_v2_1_fields.tsv (the longest that starts the message)."""
    msg = rules.CATALOGUE[code][2].upper()
    prefix = rules.CATALOGUE[code][1]
    best = None
    for table in rules.NATIONAL_FIELDS:
        if not table.startswith(prefix):
            continue
        for row in FIELD_ROWS:
            name = row["data_dictionary_name"]
            rest = msg[len(name):].lstrip(" .")
            if row["table"] == table and msg.startswith(name) and rest.startswith(("IS BLANK", "HAS")) and \
                    (best is None or len(row["data_dictionary_name"]) > best[2]):
                best = (table, row["field"], len(row["data_dictionary_name"]))
    return (best[0], best[1]) if best else None


BLANK_CASES = [c for c, (_s, _t, m) in rules.CATALOGUE.items() if m.rstrip(". Local").endswith("is blank")
               and c in rules.REGISTRY and _catalogue_field(c)]


@pytest.mark.parametrize("code", BLANK_CASES)
def test_blank_rules_from_the_catalogue(code):
    table, field = _catalogue_field(code)
    ds = factory.dataset()
    _set(ds, table, field, None)
    assert list(np.flatnonzero(_failing(ds, [code])[code])) == [0]


FORMAT_CASES = [c for c, (_s, _t, m) in rules.CATALOGUE.items() if "incorrect data format" in m
                and c in rules.REGISTRY and _catalogue_field(c)
                and rules.NATIONAL_FIELDS[_catalogue_field(c)[0]][_catalogue_field(c)[1]][0] == "str"]


@pytest.mark.parametrize("code", FORMAT_CASES)
def test_format_rules_from_the_catalogue_and_null_passes(code):
    table, field = _catalogue_field(code)
    ds = factory.dataset()
    _set(ds, table, field, "X" * 60)
    assert list(np.flatnonzero(_failing(ds, [code])[code])) == [0]
    ds = factory.dataset()
    _set(ds, table, field, None)
    assert code not in _failing(ds, [code])


def test_blanked_field_semantics():
    ds = factory.dataset()
    _set(ds, "IDS001MPI", "Postcode", "LS11AB")        # malformed: IDSREJ007, a blank postcode is a warning
    _set(ds, "IDS001MPI", "PersonBirthDate", "2999-01-01", row=1)   # IDSREJ008
    _set(ds, "IDS201CareContact", "AppType", "1")      # IDS20155: AppType is mandatory (IDS20154): removed
    res = rules.screen(ds)
    blanked = {(b.rule_code, b.column, b.record_ids) for b in res.blanked}
    assert ("IDSREJ007", "Postcode", ("P1",)) in blanked and ("IDSREJ008", "PersonBirthDate", ("P2",)) in blanked
    assert len(ds.tables["IDS001MPI"]) == 3 and ds.tables["IDS001MPI"]["Postcode"].isna().sum() == 1
    assert res.failures["IDS00123"] == 1 and res.failures["IDS00120"] == 1       # then counted as blanks
    assert ("IDS201CareContact", "C1", "IDS20155") in {(q.record_type, q.record_id, q.reason_code)
                                                       for q in res.quarantined}
    assert rules.action(rules.REGISTRY["IDS00131"]) == "count"
    assert rules.action(rules.REGISTRY["IDS10101"]) == "remove"


def test_warnings_never_remove_or_change_anything():
    ds = factory.dataset()
    _set(ds, "IDS001MPI", "Gender", "7")               # IDS00131 warning
    _set(ds, "IDS201CareContact", "Cancellation", "Y")  # IDS20167 warning
    before = {t: df.copy() for t, df in ds.tables.items()}
    res = rules.screen(ds)
    assert {"IDS00131", "IDS20167"} <= set(res.failures) and not res.quarantined and not res.blanked
    for t, df in before.items():
        pd.testing.assert_frame_equal(ds.tables[t].reset_index(drop=True), df.reset_index(drop=True))


def test_a_new_table_orphan_goes_with_its_code():
    ds = factory.dataset()
    _set(ds, "IDS004EmpStatus", "LocalPatientId", "NOBODY")
    res = rules.screen(ds)
    assert ("IDS004EmpStatus", "EMP1", "IDS00401") in {(q.record_type, q.record_id, q.reason_code)
                                                       for q in res.quarantined}


def test_coverage_lists_every_rule_not_implemented_with_why():
    cov = rules.coverage()
    assert len(cov) == 382
    assert (cov.loc[~cov["implemented"], "why_not"] != "").all()


# ---- the opt-out policy (issue 12, known bugs) ----------------------------------------------------------------

def _patients(date) -> pd.DataFrame:
    return pd.DataFrame({"local_patient_id": ["P1", "P2", "P3"], "dataset_objection_pre2020": [True, None, None],
                         "dataset_objection_date": [date, None, None]})


def test_a_pre2020_objection_without_a_date_is_honoured():
    ds = factory.dataset()
    _set(ds, "IDS101Referral", "ReferralRequestReceivedDate", "2019-05-01")
    out = policy.apply_pre2020(ds, _patients(None), "referrals_before_cutover")
    assert out["referrals"] == 1 and "P1" not in set(ds.tables["IDS001MPI"]["LocalPatientId"])
    ds = factory.dataset()
    _set(ds, "IDS101Referral", "ReferralRequestReceivedDate", "2019-05-01")
    assert policy.apply_pre2020(ds, _patients("2021-01-01"), "referrals_before_cutover")["referrals"] == 0


def test_the_optout_counts_only_what_the_rule_removed():
    ds = factory.dataset()
    _set(ds, "IDS101Referral", "ReferralRequestReceivedDate", "2019-05-01")
    _set(ds, "IDS201CareContact", "ServiceRequestId", "R-GONE", row=1)   # another patient's orphaned contact
    out = policy.apply_pre2020(ds, _patients("2019-01-01"), "referrals_before_cutover")
    removed = out["records_removed"]
    assert removed["IDS101Referral"] == 1 and removed["IDS001MPI"] == 1 and removed["IDS201CareContact"] == 1
    assert removed["IDS202CareActivity"] == 1 and removed["IDS607CodedScoreAssessmentAct"] == 2
    assert "C2" in set(ds.tables["IDS201CareContact"]["CareContactId"])    # left for screening to quarantine
    res = rules.screen(ds)
    assert ("IDS201CareContact", "C2", "IDS20142") in {(q.record_type, q.record_id, q.reason_code)
                                                       for q in res.quarantined}
