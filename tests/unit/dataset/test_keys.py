"""The fast paths behind the vectorised builder and rules give exactly what the plain pandas expressions give.

Integer codes for the id columns (``Keys``), the regex-free ID20 and NHS number checks, the Arrow blank mask,
categoricals built from one dictionary encoding: each is checked against the straightforward expression it
replaces, on awkward values, and the code cache is checked to notice every way a column can change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from caldicott.dataset import builder, rules
from caldicott.dataset.builder import Dataset, cascade
from caldicott.records.nhs_numbers import synthetic_numbers

from tests.unit.dataset.test_rules import PERIOD, tiny, tiny_source


def build(*args, **kw):
    """The builder with the test provider's ODS code (OrgIDProv has no default)."""
    return builder.build(*args, **{"org_provider": "ZZZ01", **kw})

AWKWARD = ["", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff", "\x00", "\x7f", "\x1f",
           "a", " a", "a ", "!", "~", "A" * 20, "A" * 21, " " + "A" * 19, "é", "Aé", "日本", "P1", "R-1/2",
           "x\ny", "0123456789", "١٢٣٤٥٦٧٨٩٠", None]


def _strings(values) -> pd.Series:
    return pd.Series(values, dtype="string[pyarrow]")


def test_id20_without_regex_agrees_with_the_regex():
    s = _strings(AWKWARD)
    want = s.str.fullmatch(rules.ID20).fillna(False).to_numpy(dtype=bool)
    assert (rules._fullmatch(s, rules.ID20) == want).all()
    sliced = s.iloc[3:]                                   # an Arrow array with a non-zero offset
    assert (rules._fullmatch(sliced, rules.ID20) == want[3:]).all()


def test_blank_mask_agrees_with_strip():
    s = _strings(AWKWARD)
    want = (s.isna() | (s.str.strip() == "")).fillna(True).to_numpy(dtype=bool)
    assert (rules._blank(s) == want).all()
    cat = s.astype("category")
    assert (rules._blank(cat) == want).all()


def test_nhs_numbers_from_the_arrow_buffer_agree_with_the_integer_path():
    rng = np.random.default_rng(5)
    nums = [f"{n:010d}" for n in rng.integers(0, 10**10, 3000)] + list(synthetic_numbers(rng, 500)) + [
        "1234554321", "0000000000", "12", "99900000１8", "999000001", "99900000188", "١٢٣٤٥٦٧٨٩٠", " 999000001",
        "9990000018", None, ""]
    s = _strings(nums)
    fallback = rules.nhs_invalid(s.astype(object))         # not Arrow-backed: the regex + integer path
    assert (rules.nhs_invalid(s) == fallback).all()
    assert (rules.nhs_invalid(s.iloc[7:]) == fallback[7:]).all()
    chunked = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pa.array(nums[:100], pa.large_string()),
                                                                       pa.array(nums[100:], pa.large_string())])))
    assert (rules.nhs_invalid(chunked) == fallback).all()


def test_categories_match_astype_category():
    s = _strings(["b", "a", None, "é", "B", "a", "10", "9", "", " "])
    pd.testing.assert_series_equal(builder._category(s), s.astype("category"))
    pd.testing.assert_series_equal(builder._category(_strings([None, None])), _strings([None, None]).astype("category"))


@pytest.mark.parametrize("scores", [[3, 10, 2, -1, 27, 3, 100], [1.0, 2.5, None, 10.0], ["4", "x", None, "12"]])
def test_score_categories_match_the_text_then_category(scores):
    v = pd.Series(scores)
    rows = np.array([True, False] + [True] * (len(scores) - 2))
    want = builder._score_text(v)[rows].reset_index(drop=True).astype("category")
    pd.testing.assert_series_equal(builder._score_column(v, rows), want)


def test_suffix_and_times_keep_rows_by_position_on_a_filtered_index():
    s = _strings(["a", "b", "c"]).set_axis([3, 1, 0])
    assert builder.suffix(s, "-1").tolist() == ["a-1", "b-1", "c-1"]
    t = pd.Series(pd.to_datetime(["2026-09-01 10:00:05", None, "2026-09-02 23:59:59"])).set_axis([7, 2, 5])
    hms = builder._hms(t)
    assert hms.index.tolist() == [7, 2, 5]
    assert hms.astype(object).where(hms.notna(), None).tolist() == ["10:00:05", None, "23:59:59"]


def test_month_with_scores_off_contact_keeps_each_score_on_its_own_activity():
    src = tiny_source()
    a = src.assessments
    src.assessments = pd.concat([a.iloc[[4]], a.iloc[:4], a.iloc[[5]]], ignore_index=True)   # off-contact first
    ds = build(src, PERIOD)
    act = ds.tables["IDS607CodedScoreAssessmentAct"]
    assert act["CareActId"].tolist() == ["C1-1", "C1-1", "C3-1", "C4-1"]
    assert act["_rid"].tolist() == ["A1", "A2", "A3", "A4"]
    refer = ds.tables["IDS606CodedScoreAssessmentRefer"]
    assert refer["AssToolCompTime"].astype(str).tolist() == ["11:00:00", "11:00:00"]   # 10:00 UTC = 11:00 BST


def test_codes_are_cached_and_shared_by_parent_and_child():
    ds = tiny()
    ref, _ = ds.keys.codes(ds.tables, "IDS101Referral", "ServiceRequestId")
    cc, n = ds.keys.codes(ds.tables, "IDS201CareContact", "ServiceRequestId")
    assert ds.keys.codes(ds.tables, "IDS201CareContact", "ServiceRequestId")[0] is cc     # cached: not re-encoded
    sri = ds.tables["IDS101Referral"]["ServiceRequestId"].tolist()
    assert [sri[list(ref).index(c)] for c in cc] == ds.tables["IDS201CareContact"]["ServiceRequestId"].tolist()
    assert n == len(set(sri) | set(ds.tables["IDS201CareContact"]["ServiceRequestId"]))


@pytest.mark.parametrize("how", ["setter", "assign", "loc"])
def test_a_changed_id_column_is_encoded_again(how):
    ds = tiny()
    check = rules.REGISTRY["IDS20143"].check                  # duplicated CareContactId
    assert not check(ds).any()
    cc = ds.tables["IDS201CareContact"]
    if how == "setter":
        rules._set(ds, "IDS201CareContact", "CareContactId", "C2")
    elif how == "assign":
        cc["CareContactId"] = _strings(["C2", "C2", "C3", "C4"])
    else:
        cc.loc[0, "CareContactId"] = "C2"
    assert check(ds).tolist() == [True, True, False, False]
    orphan = rules.REGISTRY["IDS20224"].check(ds)            # C1's activity has lost its contact
    assert orphan.tolist() == [True, False, False, False]


def test_cached_values_follow_the_rows_through_a_filter():
    ds = tiny()
    rules.REGISTRY["IDSREJ006"].bad(ds)
    rules.REGISTRY["IDS20143"].bad(ds)
    rules.evaluate(ds)                                         # fills the caches
    ds.keep("IDS001MPI", np.array([False, True, True]))
    ds.keep("IDS201CareContact", np.array([True, False, True, True]))
    fresh = Dataset(ds.period, ds.version, {k: v.copy() for k, v in ds.tables.items()})   # nothing cached
    got, want = rules.evaluate(ds), rules.evaluate(fresh)
    for code in want:
        assert np.array_equal(np.asarray(got[code]), np.asarray(want[code])), code
    res = rules.screen(ds)
    assert res.file_failures == [] and rules.screen(fresh).quarantined == res.quarantined


def test_cascade_with_rows_already_gone_equals_dropping_them_first():
    one, two = tiny(), tiny()
    gone = np.array([True, False, False])
    first = cascade(one, {"IDS001MPI": gone})
    two.tables["IDS001MPI"] = two.tables["IDS001MPI"].loc[~gone].reset_index(drop=True)
    second = cascade(two)
    assert {k: v.tolist() for k, v in first.items()} == {k: v.tolist() for k, v in second.items()}
    for name in one.tables:
        pd.testing.assert_frame_equal(one.tables[name], two.tables[name])


def test_copy_keeps_working_codes_and_does_not_leak_edits():
    ds = tiny()
    ds.keys.codes(ds.tables, "IDS001MPI", "LocalPatientId")
    other = ds.copy()
    rules._copy_row1_to_row0("IDS001MPI", ["LocalPatientId"])(other)
    assert rules.REGISTRY["IDSREJ010"].check(other).tolist() == [True, True, False]
    assert not rules.REGISTRY["IDSREJ010"].check(ds).any()


@pytest.mark.parametrize("unit", ["s", "ns"])
def test_date_codes_are_equal_exactly_for_equal_dates(unit):
    rng = np.random.default_rng(2)
    days = np.datetime64("2026-09-01") + rng.integers(0, 30, 400).astype("timedelta64[D]")
    for values in (days.astype(f"datetime64[{unit}]"),
                   days.astype(f"datetime64[{unit}]") + rng.integers(0, 3, 400).astype("timedelta64[h]"),
                   np.array(["1890-01-01", "2999-12-31", "NaT", "2026-09-01", "NaT"], dtype=f"datetime64[{unit}]")):
        values = values.copy()
        values[::7] = np.datetime64("NaT")
        codes, n = rules._time_codes(values)
        assert codes.min() >= 0 and codes.max() < n
        same_value = (values[:, None] == values[None, :]) | (np.isnat(values)[:, None] & np.isnat(values)[None, :])
        assert ((codes[:, None] == codes[None, :]) == same_value).all()
