"""Validation of the built tables against NHS England's IAPT rule catalogue, vectorised, as NHS England applies it.

Each :class:`Rule` carries its catalogue code, severity and message (read from the catalogue file beside this
module, ``iapt_v2_0_validation_rules.tsv``, 382 rules) and a check over whole columns: a record rule returns a boolean
mask over its table (True = the record fails); a file rule returns a bool. The checks reproduce the receiving side's
own (nhsengland/Reusable-Code-Library, ``src/dsp/validations/iapt/validations.py``): its formats are lengths of any
characters ("alphanumeric" 0-20 for an identifier, exactly 2 for a code), numbers are digits of a length, a null
passes every format, value-set, date and comparison rule (only the "is blank" rules look at nulls), the code lists
are NHS England's (:mod:`caldicott.dataset.value_sets`) and the score ranges and formats its 35 assessment items'
(:mod:`caldicott.dataset.scales`). A rule whose table or columns the data set does not carry is not evaluated (the
builder gains tables over time; :func:`coverage` says what is and is not implemented, and why).

:func:`screen` applies the rules the way NHS England's receiving side would, but *before* the file is written, so
that nothing in it is rejected:

* **warnings** are counted and never remove or change anything;
* a **reject-record** (or record-level reject-file) rule on a field the submission only needs for quality, and that
  it judges on its own (its format, its code list, its own date range: a malformed postcode, an invalid or
  duplicated NHS number, a birth date out of range), follows the national rule's own effect: where nationally a
  blank in that field is only a warning (its "is blank" rule is a WARNING, or it has none) and the field is not a
  key, the record is submitted with that field **blanked**, and the cell is reported (:class:`Blanked`: table,
  column, rule code, record ids), rather than the patient being dropped from a mandated return;
* every other reject-record rule removes the record and quarantines it with the rule's code; records left without
  their parent go with the reject-group code (``IDS10101`` ...), as do duplicates (reject-group);
* reject-file rules that are not about one record fail the build (``file_failures``).

String columns are pyarrow-backed, so the format checks run in Arrow kernels, not Python loops. Duplicate, parent
and look-up checks compare the id columns' integer codes (:class:`~caldicott.dataset.builder.Keys`) where the
builder gives them; code lists, scores and clinical codes are decided once per distinct value (categorical
columns, or a factorisation), then gathered over the rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from caldicott.dataset import scales, value_sets
from caldicott.dataset.builder import (
    KIND,
    Dataset,
    KeyCodes,
    arrow_data,
    by_code,
    cascade,
    encode_together,
    index_in,
    isin,
)
from caldicott.state.quarantine import Quarantined

CATALOGUE_PATH = Path(__file__).with_name("iapt_v2_0_validation_rules.tsv")
FIELDS_PATH = Path(__file__).with_name("iapt_v2_1_fields.tsv")


def _catalogue() -> dict[str, tuple[str, str, str]]:
    with CATALOGUE_PATH.open(newline="") as fh:
        return {r["rule_code"]: (r["severity"], r["table_prefix"], r["message"])
                for r in csv.DictReader(fh, delimiter="\t")}


def _fields() -> dict[str, dict[str, tuple[str, str]]]:
    """table -> field -> (type, key) of NHS England's v2.1 definitions, in the national order."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    with FIELDS_PATH.open(newline="") as fh:
        for r in csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t"):
            out.setdefault(r["table"], {})[r["field"]] = (r["type"], r["key"])
    return out


CATALOGUE = _catalogue()
NATIONAL_FIELDS = _fields()
REJECT_FILE, REJECT_GROUP, REJECT_RECORD, WARNING = "REJECT_FILE", "REJECT_GROUP", "REJECT_RECORD", "WARNING"

#: One boolean per record of a table: True where the record fails (a rule's mask), or has the property asked about.
Mask = npt.NDArray[np.bool_]
#: One integer per record: a row of another table (-1: none), or a code equal exactly for equal values.
Codes = npt.NDArray[np.int64]
#: A date column as numpy datetimes (NaT: null or not a date).
Dates = npt.NDArray[np.datetime64]
Check = Callable[[Dataset], Mask | bool]
Breaker = Callable[[Dataset], None]


@dataclass(frozen=True)
class Rule:
    """One catalogue rule and its vectorised check.

    ``field`` is the field the rule judges; ``single_field`` says it judges that field on its own (format, code
    list, its own date range, uniqueness of the field), which is what makes a failure blankable when the field is
    optional (see :func:`action`). ``cols`` are the columns of ``table`` and ``needs`` the other (table, column)
    pairs the check reads: a rule is evaluated only when the data set carries them all.
    """

    code: str
    table: str                    # physical table the mask is over ("FILE" for file rules)
    check: Check
    bad: Breaker | None = None    # makes row 0 of ``table`` (or the file) fail this rule (tests of the old rules)
    file_level: bool = False      # True: check returns one bool for the whole file
    field: str | None = None
    single_field: bool = False
    cols: tuple[str, ...] = ()
    needs: tuple[tuple[str, str], ...] = ()

    @property
    def severity(self) -> str:
        return CATALOGUE[self.code][0]

    @property
    def message(self) -> str:
        return CATALOGUE[self.code][2]

    def applies(self, ds: Dataset) -> bool:
        """The data set carries what the check reads (a table the builder does not produce yet: not evaluated)."""
        if self.file_level:
            return True
        if self.table not in ds.tables or any(c not in ds.tables[self.table].columns for c in self.cols):
            return False
        return all(t in ds.tables and c in ds.tables[t].columns for t, c in self.needs)

    def mask(self, ds: Dataset) -> Mask:
        """The failing records of ``table`` (all False when the rule does not apply)."""
        if not self.applies(ds):
            return np.zeros(len(ds.tables[self.table]) if self.table in ds.tables else 0, dtype=bool)
        return np.asarray(self.check(ds), dtype=bool)


REGISTRY: dict[str, Rule] = {}


def _register(rule: Rule) -> Rule:
    if rule.code not in CATALOGUE:
        raise KeyError(f"{rule.code} is not in the rule catalogue")
    if rule.code in REGISTRY:
        raise KeyError(f"{rule.code} registered twice")
    REGISTRY[rule.code] = rule
    return rule


def implemented() -> list[str]:
    """Catalogue codes implemented here, sorted."""
    return sorted(REGISTRY)


# ---- vectorised helpers ---------------------------------------------------------------------------------

def _b(x: pd.Series | npt.NDArray[Any]) -> Mask:
    """Nullable boolean → numpy bool (NA → False)."""
    if isinstance(x, np.ndarray):
        return x.astype(bool)
    return pd.Series(x).fillna(False).to_numpy(dtype=bool)


def _blank(s: pd.Series) -> Mask:
    """Null, empty or only whitespace (``s.isna() | (s.str.strip() == "")``)."""
    if s.dtype.kind in "Mm" or str(s.dtype).startswith(("Int", "int", "float")):
        return s.isna().to_numpy()
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = pd.Series(s.cat.categories, dtype="string[pyarrow]")
        empty = _blank(cats)
        codes = s.cat.codes.to_numpy()
        return by_code(empty.astype(bool), codes, True)
    data = arrow_data(s)
    if data is not None and (pa.types.is_string(data.type) or pa.types.is_large_string(data.type)):
        # Arrow's "all whitespace" uses the same Unicode whitespace as its trim; "" is not whitespace: length 0
        empty = pc.or_(pc.equal(pc.binary_length(data), 0), pc.utf8_is_space(data))
        return _b_arrow(pc.or_kleene(data.is_null(), empty))
    return s.isna().to_numpy() | _b(s.str.strip() == "")


def _b_arrow(x: pa.ChunkedArray | pa.Array) -> Mask:
    """Arrow boolean → numpy bool (null → False)."""
    return np.asarray(x.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _blank_of(ds: Dataset, table: str, col: str) -> Mask:
    """``_blank`` of one column, memoised while the column is unchanged (blank, format and cross-field rules all
    ask for it)."""
    s = ds.tables[table][col]
    empty: Mask = ds.keys.derived("blank", (s,), lambda: _blank(s), rows=True)
    return empty


def _matches(ds: Dataset, table: str, col: str, regex: str) -> Mask:
    """``fullmatch(regex)`` of a text column, row by row (null: False), memoised like the blank mask."""
    s = ds.tables[table][col]
    matched: Mask = ds.keys.derived(f"match:{regex}", (s,), lambda: _fullmatch(s, regex), rows=True)
    return matched


def _set(ds: Dataset, table: str, col: str, value: str | None) -> None:
    df = ds.tables[table]
    if df[col].dtype.kind == "M":
        df[col] = df[col].astype(object)
        df.loc[0, col] = value
        df[col] = pd.to_datetime(df[col], errors="coerce").astype("datetime64[s]")
    elif str(df[col].dtype) == "Int64":
        df[col] = df[col].astype(object)
        df.loc[0, col] = value
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    else:
        df[col] = df[col].astype(object)
        df.loc[0, col] = value
        df[col] = df[col].astype("string[pyarrow]")


def _setter(table: str, col: str, value: str | None) -> Breaker:
    return lambda ds: _set(ds, table, col, value)


def _parent_row(ds: Dataset, table: str, col: str, parent: str, key: str, codes: KeyCodes | None = None
                ) -> Codes:
    """For each row of ``table``: the first row of ``parent`` whose ``key`` equals its ``col`` (-1: none).

    Over the id columns' integer codes when both are id columns of one kind (no string hashed); ``codes`` overrides
    the row codes (a second hop, e.g. a referral's LocalPatientId taken from IDS101). Other columns (the tables the
    builder is gaining) are looked up in Arrow.
    """
    same_kind = KIND.get((parent, key)) is not None and (codes is not None or KIND.get((table, col)) == KIND[(parent,
                                                                                                           key)])
    if not same_kind:
        if not len(ds.tables[table]):
            return np.zeros(0, dtype=np.int64)
        return index_in(ds.tables[table][col], ds.tables[parent][key])
    if codes is None:
        codes, _ = ds.keys.codes(ds.tables, table, col)
    first = ds.keys.first_row(ds.tables, parent, key)
    if not len(first):
        return np.full(len(codes), -1, dtype=np.int64)
    return np.where(codes >= 0, first[np.maximum(codes, 0)], -1)


def _take(values: Dates, rows: Codes, missing: np.datetime64) -> Dates:
    """``values[rows]`` with ``missing`` where the row is -1."""
    if not len(values):
        return np.full(len(rows), missing, dtype=values.dtype)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], missing)


def _lookup_date(ds: Dataset, table: str, col: str, parent: str, key: str, value: str) -> Dates:
    """``parent[value]`` (a date) of each row's parent (first match; NaT when there is none)."""
    vals = ds.tables[parent][value].to_numpy()
    return _take(vals, _parent_row(ds, table, col, parent, key), np.datetime64("NaT"))


def _before_parent_date(table: str, date_col: str, col: str, parent: str, key: str, value: str) -> Check:
    """The row's date is earlier than its parent's ``value`` date (no parent or no date: not flagged)."""
    def check(ds: Dataset) -> Mask:
        mine = ds.tables[table][date_col].to_numpy()
        return np.asarray(mine < _lookup_date(ds, table, col, parent, key, value), dtype=bool)
    return check


def _period_start(ds: Dataset) -> pd.Timestamp:
    return pd.Timestamp(ds.period.first)


def _period_end(ds: Dataset) -> pd.Timestamp:
    """Last day of the period (inclusive), as the data set's date columns are dates."""
    return pd.Timestamp(ds.period.last)


# ---- rule kinds (each as the receiving side defines it) -------------------------------------------------------

def _col(ds: Dataset, table: str, col: str) -> pd.Series:
    return ds.tables[table][col]


def _per_distinct(s: pd.Series, fn: Callable[[pd.Series], Mask], missing: bool = False) -> Mask:
    """``fn`` (a boolean per value) decided once per distinct value of ``s``, then gathered over the rows; nulls
    take ``missing``. What keeps Python-level checks (clinical codes, scores) per value, not per row."""
    if not len(s):
        return np.zeros(0, dtype=bool)
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = pd.Series(s.cat.categories, dtype="string[pyarrow]")
        return by_code(np.asarray(fn(cats), dtype=bool) if len(cats) else np.zeros(0, bool),
                       s.cat.codes.to_numpy(), missing)
    codes, uniq = pd.factorize(s.astype(object), use_na_sentinel=True)
    vals = np.asarray(fn(pd.Series(uniq, dtype="string[pyarrow]")), dtype=bool) if len(uniq) else np.zeros(0, bool)
    return by_code(vals, codes, missing)


def blank(code: str, table: str, col: str, bad: Breaker | None = None) -> Rule:
    """"... is blank": null, empty or only spaces."""
    BLANK_RULES[(table, col)] = code
    return _register(Rule(code, table, lambda ds: _blank_of(ds, table, col), bad or _setter(table, col, None),
                          field=col, single_field=True, cols=(col,)))


#: (table, field) -> the code of its "is blank" rule (what decides whether a field may be blanked)
BLANK_RULES: dict[tuple[str, str], str] = {}

_NOT_LINE_END = "[^\\n\\r\\u0085\\u2028\\u2029]"


def _length_ok(s: pd.Series, lo: int, hi: int) -> Mask:
    """``^.{lo,hi}$`` (Java regex: ``.`` is any character but a line end), the receiving side's "alphanumeric"."""
    data = arrow_data(s)
    if data is not None and (pa.types.is_large_string(data.type) or pa.types.is_string(data.type)):
        n = pc.utf8_length(data)
        ok = pc.and_(pc.and_(pc.greater_equal(n, lo), pc.less_equal(n, hi)),
                     pc.invert(pc.match_substring_regex(data, "[\\n\\r\\x{0085}\\x{2028}\\x{2029}]")))
        return _b_arrow(ok)
    return _b(s.astype("string[pyarrow]").str.fullmatch(f"{_NOT_LINE_END}{{{lo},{hi}}}"))


def _fmt_mask(ds: Dataset, table: str, col: str, test: Callable[[pd.Series], Mask]) -> Mask:
    """Populated and failing ``test`` (a null or blank passes a format rule)."""
    s = _col(ds, table, col)
    if s.dtype.kind in "Mm":
        return np.zeros(len(s), bool)
    if isinstance(s.dtype, pd.CategoricalDtype) or not _is_arrow_text(s):
        return _per_distinct(s, lambda v: ~test(v) & ~_blank(v), False)
    populated = ~_blank_of(ds, table, col)
    passed: Mask = ds.keys.derived(f"fmt:{id(test)}", (s,), lambda: test(s), rows=True)
    return populated & ~passed


def _is_arrow_text(s: pd.Series) -> bool:
    data = arrow_data(s)
    return data is not None and (pa.types.is_large_string(data.type) or pa.types.is_string(data.type))


_LENGTH_TESTS: dict[tuple[int, int], Callable[[pd.Series], Mask]] = {}


def _length_test(lo: int, hi: int) -> Callable[[pd.Series], Mask]:
    if (lo, hi) not in _LENGTH_TESTS:
        _LENGTH_TESTS[(lo, hi)] = lambda v: _length_ok(v, lo, hi)
    return _LENGTH_TESTS[(lo, hi)]


def alnum(code: str, table: str, col: str, lo: int, hi: int, bad: Breaker | None = None) -> Rule:
    """"... has (an) incorrect data format" for text: ``lo``..``hi`` characters of any kind."""
    test = _length_test(lo, hi)
    return _register(Rule(code, table, lambda ds: _fmt_mask(ds, table, col, test),
                          bad or _setter(table, col, "X" * (hi + 1)), field=col, single_field=True, cols=(col,)))


_REGEX_TESTS: dict[str, Callable[[pd.Series], Mask]] = {}


def fmt(code: str, table: str, col: str, regex: str, bad_value: str | None = None) -> Rule:
    """Populated but not matching ``regex`` in full."""
    if regex not in _REGEX_TESTS:
        _REGEX_TESTS[regex] = lambda v: _fullmatch(v, regex)
    test = _REGEX_TESTS[regex]
    return _register(Rule(code, table, lambda ds: _fmt_mask(ds, table, col, test),
                          _setter(table, col, bad_value) if bad_value is not None else None,
                          field=col, single_field=True, cols=(col,)))


#: An identifier's format (an20): the receiving side's ``^.{0,20}$``, ``.`` being any character but a line end.
ID20 = "[^\n\r\u0085\u2028\u2029]{0,20}"
#: Formats with an exact equivalent cheaper than the regex (tests check they agree).
FAST_FORMATS: dict[str, Callable[[pd.Series], Mask]] = {ID20: lambda v: _length_ok(v, 0, 20)}


def _fullmatch(s: pd.Series, regex: str) -> Mask:
    fast = FAST_FORMATS.get(regex)
    if fast is not None and _is_arrow_text(s):
        return fast(s)
    s = s.astype("string[pyarrow]") if str(s.dtype) != "string" else s
    return _b(s.str.fullmatch(regex))


def numeric(code: str, table: str, col: str, lo: int, hi: int) -> Rule:
    """The receiving side's "numeric" format: ``lo``..``hi`` digits (an integer column: 0 .. 10**hi - 1)."""
    regex = f"[0-9]{{{lo},{hi}}}"

    def check(ds: Dataset) -> Mask:
        s = _col(ds, table, col)
        if pd.api.types.is_numeric_dtype(s.dtype) and not isinstance(s.dtype, pd.CategoricalDtype):
            v = pd.to_numeric(s, errors="coerce").astype("Float64")
            ok = (v >= 0) & (v < 10 ** hi) & (v.round() == v) & ((v >= 10 ** (lo - 1)) if lo > 1 else True)
            valid: Mask = ok.fillna(True).to_numpy(dtype=bool)
            return s.notna().to_numpy() & ~valid
        if regex not in _REGEX_TESTS:
            _REGEX_TESTS[regex] = lambda v: _fullmatch(v, regex)
        return _fmt_mask(ds, table, col, _REGEX_TESTS[regex])
    return _register(Rule(code, table, check, field=col, single_field=True, cols=(col,)))


def in_set(code: str, version_field: str | None = None) -> Rule:
    """"... contains an invalid ...": populated but not one of NHS England's codes for the rule
    (:mod:`caldicott.dataset.value_sets`; the list for the data set's version)."""
    vs = value_sets.value_sets()[code]
    table, col = vs.table, vs.field

    def check(ds: Dataset) -> Mask:
        allowed = sorted(value_sets.codes(code, ds.version if ds.version in ("2.0", "2.1") else "2.1"))
        s = _col(ds, table, col)
        if isinstance(s.dtype, pd.CategoricalDtype):   # decided per category, then one gather over the rows
            cats = pd.Series(s.cat.categories, dtype="string[pyarrow]")
            return by_code(~_blank(cats) & ~isin(cats, allowed), s.cat.codes.to_numpy(), False)
        if not _is_arrow_text(s):
            s = s.astype("string[pyarrow]")
            empty = _blank(s)
        else:
            empty = _blank_of(ds, table, col)
        listed: Mask = isin(s, allowed)
        return ~empty & ~listed
    return _register(Rule(code, table, check, _setter(table, col, "@@"), field=col, single_field=True,
                          cols=(col,)))


EARLIEST_DATE = pd.Timestamp("1890-01-01")


def _dates(s: pd.Series) -> Dates:
    """A date column as datetime64 (text parsed as ISO dates; what does not parse: NaT)."""
    if s.dtype.kind == "M":
        return s.to_numpy()
    return pd.to_datetime(s.astype(object), errors="coerce", format="ISO8601").to_numpy()


def date_fmt(code: str, table: str, col: str) -> Rule:
    """"... has incorrect date format" (is_valid_date_column_rule): a date on or after 1 January 1890 at midnight.
    A text column must also parse as an ISO date."""
    def check(ds: Dataset) -> Mask:
        s = _col(ds, table, col)
        d = _dates(s)
        with np.errstate(invalid="ignore"):
            bad: Mask = ~np.isnat(d) & ((d < EARLIEST_DATE.to_datetime64()) | (d != d.astype("datetime64[D]")))
        if s.dtype.kind != "M":
            bad |= np.isnat(d) & ~_blank(s)
        return bad
    return _register(Rule(code, table, check, _setter(table, col, "1800-01-01"), field=col, single_field=True,
                          cols=(col,)))


def datetime_fmt(code: str, table: str, col: str) -> Rule:
    """IDS00021 (is_valid_datetime_column_rule): on or after 1890-01-01 00:00:00."""
    def check(ds: Dataset) -> Mask:
        d = _dates(_col(ds, table, col))
        return ~np.isnat(d) & (d < EARLIEST_DATE.to_datetime64())
    return _register(Rule(code, table, check, _setter(table, col, "1800-01-01 00:00:00"), field=col,
                          single_field=True, cols=(col,)))


TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"


def time_fmt(code: str, table: str, col: str) -> Rule:
    """A time: HH:MM:SS. (The receiving side accepts any time its IDB holds; a text time that is not one would not
    load into the IDB's time column, so it is checked here.)"""
    return fmt(code, table, col, TIME, "25:61")


def _bound(ds: Dataset, which: str) -> np.datetime64:
    start, end = pd.Timestamp(ds.period.first), pd.Timestamp(ds.period.last)
    return {"start": start, "end": end, "end+1d": end + pd.Timedelta(days=1),
            "end+2y": end + pd.DateOffset(years=2)}.get(which, pd.Timestamp(which) if which[:1].isdigit() else end
                                                        ).to_datetime64()


def after(code: str, table: str, col: str, bound: str) -> Rule:
    """The date is after ``bound`` (the period's end, end + 1 day, end + 2 years). Null passes."""
    return _register(Rule(code, table, lambda ds: _dates(_col(ds, table, col)) > _bound(ds, bound),
                          _setter(table, col, "2999-01-01"), field=col, single_field=True, cols=(col,)))


def before(code: str, table: str, col: str, bound: str) -> Rule:
    """The date is before ``bound`` (the period's start, or a fixed date). Null passes."""
    return _register(Rule(code, table, lambda ds: _dates(_col(ds, table, col)) < _bound(ds, bound),
                          _setter(table, col, "1891-01-01"), field=col, single_field=True, cols=(col,)))


def before_col(code: str, table: str, col: str, other: str) -> Rule:
    """The date is before another date of the same record (a cross-field rule: the record is rejected)."""
    return _register(Rule(code, table, lambda ds: _dates(_col(ds, table, col)) < _dates(_col(ds, table, other)),
                          field=col, cols=(col, other)))


def before_parent(code: str, table: str, col: str, via: str, parent: str, key: str, value: str) -> Rule:
    """The date is before its parent record's ``value`` date (no parent, or a null: passes)."""
    def check(ds: Dataset) -> Mask:
        theirs = _take(_dates(ds.tables[parent][value]), _parent_row(ds, table, via, parent, key),
                       np.datetime64("NaT"))
        return np.asarray(_dates(_col(ds, table, col)) < theirs, dtype=bool)
    return _register(Rule(code, table, check, field=col, cols=(col, via), needs=((parent, key), (parent, value))))


def before_birth(code: str, table: str, col: str) -> Rule:
    """The date is before the person's birth date: through LocalPatientId, or for a referral-level table through
    its referral's LocalPatientId (two hops)."""
    if "LocalPatientId" in NATIONAL_FIELDS[table]:
        return before_parent(code, table, col, "LocalPatientId", MPI, "LocalPatientId", "PersonBirthDate")

    def check(ds: Dataset) -> Mask:
        ref_row = _parent_row(ds, table, "ServiceRequestId", REF, "ServiceRequestId")
        birth_by_ref = _take(_dates(ds.tables[MPI]["PersonBirthDate"]),
                             _parent_row(ds, REF, "LocalPatientId", MPI, "LocalPatientId"), np.datetime64("NaT"))
        birth = _take(birth_by_ref, ref_row, np.datetime64("NaT"))
        return np.asarray(_dates(_col(ds, table, col)) < birth, dtype=bool)
    return _register(Rule(code, table, check, field=col, cols=(col, "ServiceRequestId"),
                          needs=((REF, "LocalPatientId"), (MPI, "PersonBirthDate"))))


def _has_parent(ds: Dataset, table: str, col: str, parent: str, parent_col: str) -> Mask:
    """``table[col].isin(parent[parent_col])``: over integer codes when both are id columns of one kind."""
    if KIND.get((table, col)) is not None and KIND.get((table, col)) == KIND.get((parent, parent_col)):
        return ds.keys.isin(ds.tables, table, col, parent, parent_col)
    return isin(ds.tables[table][col], ds.tables[parent][parent_col])


def orphan(code: str, table: str, col: str, parent: str, parent_col: str, bad_value: str = "NOPARENT") -> Rule:
    """Reject-group rule: no valid parent record (e.g. IDS10101: no IDS001 for this LocalPatientId)."""
    ORPHAN_CODE[table] = code
    PARENTS[table] = (col, parent, parent_col)
    return _register(Rule(code, table, lambda ds: ~_has_parent(ds, table, col, parent, parent_col),
                          _setter(table, col, bad_value), field=col, cols=(col,), needs=((parent, parent_col),)))


#: Table -> the reject-group code for a record whose parent was removed; table -> (column, parent, parent column)
ORPHAN_CODE: dict[str, str] = {}
PARENTS: dict[str, tuple[str, str, str]] = {}


def custom(code: str, table: str, check: Check, bad: Breaker | None = None, *, file_level: bool = False,
           field: str | None = None, cols: tuple[str, ...] = (), needs: tuple[tuple[str, str], ...] = (),
           single_field: bool = False) -> Rule:
    return _register(Rule(code, table, check, bad, file_level, field, single_field, cols, needs))


def unique(code: str, table: str, cols: list[str], *, nulls_unique: bool = True, bad: Breaker | None = None,
           single_field: bool = False) -> Rule:
    """"More than one ... provided for this ... combination" (uniqueness_rule): every record of a duplicated key
    fails. With ``nulls_unique`` (the receiving side's default) a key with a null part is never a duplicate."""
    def check(ds: Dataset) -> Mask:
        df = ds.tables[table]
        if not len(df):
            return np.zeros(0, bool)
        present = np.ones(len(df), bool)
        if nulls_unique:
            for c in cols:
                present &= ~_blank_of(ds, table, c) if df[c].dtype.kind not in "Mm" else df[c].notna().to_numpy()
        return present & _duplicated(*_group(ds, table, cols))
    return _register(Rule(code, table, check, bad or _dup_row0(table), field=cols[0] if len(cols) == 1 else None,
                          single_field=single_field, cols=tuple(cols)))


def unique_where_null(code: str, table: str, key: str, null_col: str) -> Rule:
    """uniqueness_with_condition_rule: among records whose ``null_col`` is null, more than one per ``key``."""
    def check(ds: Dataset) -> Mask:
        df = ds.tables[table]
        cond = df[null_col].isna().to_numpy()
        if not cond.any():
            return np.zeros(len(df), bool)
        key_codes, n = _group(ds, table, [key])
        counts = np.bincount(key_codes[cond], minlength=n)
        return cond & (counts[key_codes] > 1)
    return _register(Rule(code, table, check, cols=(key, null_col)))


def _dup_row0(table: str) -> Breaker:
    return lambda ds: ds.tables.__setitem__(table, pd.concat([ds.tables[table].iloc[[0]], ds.tables[table]],
                                                             ignore_index=True))


def both(code: str, table: str, fn: Callable[[Dataset], Mask], cols: tuple[str, ...],
         field: str | None = None) -> Rule:
    """A comparison of fields of one record (column_comparison_rule)."""
    return _register(Rule(code, table, fn, field=field, cols=cols))


# ---- clinical codes -------------------------------------------------------------------------------------------

_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
               [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
               [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
               [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def verhoeff_ok(digits: str) -> bool:
    """The last digit is the Verhoeff check digit of the others (SNOMED CT identifiers)."""
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][int(ch)]]
    return c == 0


def snomed_ok(value: str, lo: int = 6, hi: int = 18) -> bool:
    """The receiving side's SNOMED CT check (``is_valid_snomed_ct``): ``lo``..``hi`` digits, a valid Verhoeff check
    digit and a concept partition (``00`` or ``10`` before it); or a post-coordinated ``concept:attribute=value`` with
    attribute 408730004 or 363589002 and both concepts valid."""
    m = re.fullmatch(r"([0-9]+):(408730004|363589002)=([0-9]+)", value)
    if m:
        return snomed_ok(m.group(1)) and snomed_ok(m.group(3))
    return (value.isascii() and value.isdigit() and lo <= len(value) <= hi and verhoeff_ok(value)
            and value[-3:-1] in ("00", "10"))


def snomed(code: str, table: str, col: str, hi: int = 18) -> Rule:
    """"... has failed SNOMED CT checks" (decided once per distinct code)."""
    def check(ds: Dataset) -> Mask:
        s = _col(ds, table, col)
        return _per_distinct(s, lambda v: np.array([not snomed_ok(x, 6, hi) and x.strip() != "" for x in v.tolist()],
                                                   dtype=bool))
    return _register(Rule(code, table, check, _setter(table, col, "123456789"), field=col, single_field=True,
                          cols=(col,)))


def icd10_ok(value: str) -> bool:
    """ICD-10 in the receiving side's check (``icd_10_format``): 4 to 6 characters (``F32X``, ``F411``, ``F41.1``)."""
    return 4 <= len(value) <= 6


def find_code(code: str, table: str, scheme_col: str, code_col: str) -> Rule:
    """"... format does not match expected format from selected Finding Scheme In Use" (v2.1's
    ``is_valid_icd_snomed_find_code``): scheme 01 ICD-10 (4-6 characters), 04 SNOMED CT (the full check); a null
    code, or another scheme, passes."""
    def check(ds: Dataset) -> Mask:
        df = ds.tables[table]
        scheme = df[scheme_col].astype("string[pyarrow]")
        value = df[code_col]
        icd = _per_distinct(value, lambda v: np.array([not icd10_ok(x) for x in v.tolist()], dtype=bool))
        sct = _per_distinct(value, lambda v: np.array([not snomed_ok(x) for x in v.tolist()], dtype=bool))
        return (_b(scheme == "01") & icd) | (_b(scheme == "04") & sct)
    return _register(Rule(code, table, check, field=code_col, cols=(scheme_col, code_col)))


# ---- the tables (NHS England's v2.1 names) ---------------------------------------------------------------------

H, MPI, GP, ACC, EMP, DIS = ("IDS000Header", "IDS001MPI", "IDS002GP", "IDS003AccommStatus", "IDS004EmpStatus",
                             "IDS007DisabilityType")
SOC, OVS, REF, ONW, PAUSE = ("IDS011SocPerCircumstances", "IDS012OverseasVisitorChargCat", "IDS101Referral",
                             "IDS105OnwardReferral", "IDS108WaitingTimePauses")
CC, ACT, NET, PREV, LTC = ("IDS201CareContact", "IDS202CareActivity", "IDS205InternetTherLog",
                           "IDS601MedHistPrevDiag", "IDS602LongTermCondition")
PRES, A606, A607, CLUS, QUAL = ("IDS603PresentingComplaints", "IDS606CodedScoreAssessmentRefer",
                                "IDS607CodedScoreAssessmentAct", "IDS803CareCluster", "IDS902CarePersQual")
#: the tables NHS England's file must hold (IDSREJ002-005)
MANDATORY_TABLES = (H, MPI, GP, REF)

POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}"
#: IDSREJ008: a person older than this at the start of the period (MAX_PERSON_AGE of the receiving side)
MAX_PERSON_AGE = 130


def _populated(ds: Dataset, table: str, col: str) -> Mask:
    s = _col(ds, table, col)
    return s.notna().to_numpy() if s.dtype.kind in "Mm" or (pd.api.types.is_numeric_dtype(s.dtype) and not \
        isinstance(s.dtype, pd.CategoricalDtype)) else ~_blank_of(ds, table, col)


def _eq(ds: Dataset, table: str, col: str, values: list[str]) -> Mask:
    return isin(_col(ds, table, col), values)


# ---- IDS000 header --------------------------------------------------------------------------------------------
blank("IDS00001", H, "DatSetVer")
in_set("IDS00003")
fmt("IDS00004", H, "DatSetVer", r"[0-9]{1,2}\.[0-9]{1,2}", "two")
blank("IDS00028", H, "OrgIDProv")
alnum("IDS00029", H, "OrgIDProv", 3, 6)
blank("IDS00031", H, "OrgIDSubmit")
alnum("IDS00032", H, "OrgIDSubmit", 3, 6)
blank("IDS00012", H, "PrimSystemInUse")
alnum("IDS00013", H, "PrimSystemInUse", 0, 20)
blank("IDS00014", H, "ReportingPeriodStartDate")
date_fmt("IDS00015", H, "ReportingPeriodStartDate")
custom("IDS00016", H, lambda ds: _b(ds.tables[H]["ReportingPeriodStartDate"] != _period_start(ds)),
       _setter(H, "ReportingPeriodStartDate", "1999-01-01"), field="ReportingPeriodStartDate",
       cols=("ReportingPeriodStartDate",))
blank("IDS00017", H, "ReportingPeriodEndDate")
date_fmt("IDS00018", H, "ReportingPeriodEndDate")
custom("IDS00019", H, lambda ds: _b(ds.tables[H]["ReportingPeriodEndDate"] != _period_end(ds)),
       _setter(H, "ReportingPeriodEndDate", "1999-01-31"), field="ReportingPeriodEndDate",
       cols=("ReportingPeriodEndDate",))
blank("IDS00020", H, "DateTimeDatSetCreate")
datetime_fmt("IDS00021", H, "DateTimeDatSetCreate")
# after the upload: the upload is after the build, so "now" (+1 hour of clock skew) stands in for it
custom("IDS00027", H, lambda ds: _b(ds.tables[H]["DateTimeDatSetCreate"] > pd.Timestamp(
    dt.datetime.now(dt.UTC).replace(tzinfo=None)) + pd.Timedelta(hours=1)),
       _setter(H, "DateTimeDatSetCreate", "2999-01-01 00:00:00"), field="DateTimeDatSetCreate",
       cols=("DateTimeDatSetCreate",))

# ---- file rules -----------------------------------------------------------------------------------------------


def _structure(ds: Dataset) -> bool:
    """IDSREJ001: the file's structure is the IDB's: the mandatory tables are there, and every table and column
    is one of NHS England's v2.1 definitions (a column the builder does not produce yet is written empty by the IDB
    writer, so a missing optional column is not a structure failure)."""
    if any(t not in ds.tables for t in MANDATORY_TABLES):
        return True
    for name, df in ds.tables.items():
        national = NATIONAL_FIELDS.get(name)
        if national is None:
            return True
        cols = [c for c in df.columns if c != "_rid"]
        if any(c not in national for c in cols) or len(set(cols)) != len(cols):
            return True
    return False


def _empty(table: str) -> Breaker:
    return lambda ds: ds.tables.__setitem__(table, ds.tables[table].iloc[0:0])


custom("IDSREJ001", "FILE", _structure, lambda ds: ds.tables.__setitem__(
    MPI, ds.tables[MPI].assign(NotAField=pd.Series(["x"] * len(ds.tables[MPI]), dtype="string[pyarrow]"))),
    file_level=True)
custom("IDSREJ002", "FILE", lambda ds: len(ds.tables[H]) == 0, _empty(H), file_level=True)
custom("IDSREJ003", "FILE", lambda ds: len(ds.tables[MPI]) == 0, _empty(MPI), file_level=True)
custom("IDSREJ004", "FILE", lambda ds: len(ds.tables[REF]) == 0, _empty(REF), file_level=True)
custom("IDSREJ005", "FILE", lambda ds: len(ds.tables[GP]) == 0, _empty(GP), file_level=True)
custom("IDSREJ015", "FILE", lambda ds: len(ds.tables[H]) != 1,
       lambda ds: ds.tables.__setitem__(H, pd.concat([ds.tables[H]] * 2, ignore_index=True)), file_level=True)


def _in_period_records(ds: Dataset) -> bool:
    """IDSREJ012: nothing in the file is for the period (no referral open in it)."""
    ref = ds.tables[REF]
    open_ref = (_b(ref["ReferralRequestReceivedDate"] <= _period_end(ds)) &
                ~_b(ref["ServDischDate"] < _period_start(ds)))
    return not open_ref.any()


custom("IDSREJ012", "FILE", _in_period_records,
       lambda ds: ds.tables.__setitem__(REF, ds.tables[REF].assign(
           ReferralRequestReceivedDate=pd.Timestamp("2000-01-01"), ServDischDate=pd.Timestamp("2000-01-02"))),
       file_level=True)

# The reject-file checks that single out records: NHS number, postcode and birth date are blanked (a blank is only a
# warning nationally: IDS00111, IDS00123, IDS00120); a duplicated local patient id (a key) removes the records.
def nhs_invalid(s: pd.Series) -> Mask:
    """True where a populated NHS number is not a valid one (format, check digit, mirrored, all zeros).

    Pure integer arithmetic over the column: no per-row Python (cf. ``records.nhs_numbers.valid_mask``). The
    digits are read straight from the Arrow buffer of the ten-digit values.
    """
    present = ~_blank(s)
    out = present.copy()
    data = arrow_data(s)
    if data is not None and pa.types.is_large_string(data.type):
        arr = data.combine_chunks() if data.num_chunks != 1 else data.chunk(0)
        ten = _b_arrow(pc.and_(pc.equal(pc.binary_length(arr), 10), pc.ascii_is_decimal(arr)))
        if not ten.any():
            return out
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
        raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
        d = (raw[offsets[:-1][ten, None] + np.arange(10)] - ord("0")).astype(np.int64)
    else:
        ten = _b(s.str.fullmatch(r"[0-9]{10}"))
        if not ten.any():
            return out
        v = s[ten].astype("int64").to_numpy()
        d = (v[:, None] // (10 ** np.arange(9, -1, -1))) % 10
    total = d[:, :9] @ np.arange(10, 1, -1)
    check = 11 - total % 11
    check = np.where(check == 11, 0, check)
    mirrored = (d[:, :5] == d[:, :4:-1]).all(axis=1)
    ok = (check != 10) & (check == d[:, 9]) & ~mirrored & d.any(axis=1)
    out[ten] = ~ok
    return out


custom("IDSREJ006", MPI, lambda ds: ds.keys.derived("nhs_invalid", (ds.tables[MPI]["NHSNumber"],),
                                                    lambda: nhs_invalid(ds.tables[MPI]["NHSNumber"]), rows=True),
       _setter(MPI, "NHSNumber", "9990000019"), field="NHSNumber", single_field=True, cols=("NHSNumber",))
fmt("IDSREJ007", MPI, "Postcode", POSTCODE, "LS11AB")
custom("IDSREJ008", MPI, lambda ds: (_dates(ds.tables[MPI]["PersonBirthDate"]) > _period_end(ds).to_datetime64()) |
       (_dates(ds.tables[MPI]["PersonBirthDate"]) <= (_period_start(ds) - pd.DateOffset(years=MAX_PERSON_AGE + 1)
                                                      ).to_datetime64()),
       _setter(MPI, "PersonBirthDate", "2999-01-01"), field="PersonBirthDate", single_field=True,
       cols=("PersonBirthDate",))
def _value_codes(ds: Dataset, table: str, col: str) -> tuple[Codes, int]:
    """Codes ``0..n-1`` with equal codes exactly for equal values, null being one value of its own (as in
    ``DataFrame.duplicated``): the id columns' shared codes, a categorical's codes, else a factorisation."""
    s = ds.tables[table][col]
    codes: Codes | KeyCodes
    if (table, col) in KIND:
        codes, n = ds.keys.codes(ds.tables, table, col)
    elif isinstance(s.dtype, pd.CategoricalDtype):
        codes, n = s.cat.codes.to_numpy().astype(np.int64), len(s.cat.categories)
    elif s.dtype.kind in "Mm":
        return _time_codes(s.to_numpy())
    elif (data := arrow_data(s)) is not None and pa.types.is_large_string(data.type):
        def enc() -> tuple[KeyCodes, int]:
            (c,), size = encode_together([data])
            return c, size
        codes, n = ds.keys.derived("codes", (s,), enc, rows=True)
    else:
        codes, uniq = pd.factorize(s.astype(object), use_na_sentinel=True)
        codes, n = codes.astype(np.int64), len(uniq)
    return np.where(codes < 0, n, codes).astype(np.int64, copy=False), n + 1


def _time_codes(values: Dates) -> tuple[Codes, int]:
    """Codes for a date/time column (NaT one value of its own): dates a few weeks apart are their offset in
    days from the earliest, no hashing; anything more spread out is factorised."""
    v = values.view(np.int64)
    nat = np.isnat(values)
    if nat.all():
        return np.zeros(len(v), dtype=np.int64), 1
    lo, hi = int(v[~nat].min()), int(v[~nat].max())
    unit = np.datetime_data(values.dtype)[0]
    day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}.get(unit, 1)
    step = day if day > 1 and not ((v[~nat] - lo) % day).any() else 1
    n = (hi - lo) // step + 1
    if n > 4 * len(v) + 1024:
        codes, uniq = pd.factorize(v)
        return codes.astype(np.int64), len(uniq)     # NaT is one more integer: equal to itself, as wanted
    return np.where(nat, n, (v - lo) // step), n + 1


def _compact(key: Codes) -> tuple[Codes, int]:
    codes, uniq = pd.factorize(key)
    return codes.astype(np.int64), len(uniq)


def _group(ds: Dataset, table: str, cols: list[str]) -> tuple[Codes, int]:
    """One integer per row, equal exactly for rows equal in every column of ``cols``."""
    key, n = _value_codes(ds, table, cols[0])
    for c in cols[1:]:
        codes, m = _value_codes(ds, table, c)
        if n * m >= 2 ** 62:
            key, n = _compact(key)
        key, n = key * m + codes, n * m
    return key, n


def _duplicated(key: Codes, n: int) -> Mask:
    """``duplicated(keep=False)`` of a code array."""
    if not len(key):
        return np.zeros(0, dtype=bool)
    if n > 4 * len(key) + 1024:      # a sparse product of codes: count over the distinct ones instead
        key, n = _compact(key)
    return np.bincount(key, minlength=n)[key] > 1


def _copy_row1_to_row0(table: str, cols: list[str]) -> Breaker:
    def bad(ds: Dataset) -> None:
        df = ds.tables[table]
        for c in cols:
            df[c] = df[c].astype(object)
            value: Any = df.loc[1, c]   # any scalar: pandas-stubs' result of .loc is wider than what it takes
            df.loc[0, c] = value
            df[c] = df[c].astype("string[pyarrow]")
    return bad


unique("IDSREJ009", MPI, ["NHSNumber"], bad=_copy_row1_to_row0(MPI, ["NHSNumber"]), single_field=True)
unique("IDSREJ010", MPI, ["LocalPatientId"], bad=_copy_row1_to_row0(MPI, ["LocalPatientId"]))

# ---- IDS001 MPI -----------------------------------------------------------------------------------------------
custom("IDS00145", MPI, lambda ds: ~_has_parent(ds, MPI, "LocalPatientId", GP, "LocalPatientId"),
       cols=("LocalPatientId",), needs=((GP, "LocalPatientId"),))
custom("IDS00146", MPI, lambda ds: ~_has_parent(ds, MPI, "LocalPatientId", REF, "LocalPatientId"),
       cols=("LocalPatientId",), needs=((REF, "LocalPatientId"),))
blank("IDS00101", MPI, "LocalPatientId")
alnum("IDS00102", MPI, "LocalPatientId", 0, 20)
blank("IDS00151", MPI, "OrgIDLocalPatientId")
alnum("IDS00152", MPI, "OrgIDLocalPatientId", 3, 5)
custom("IDS00153", MPI, lambda ds: ~_blank_of(ds, MPI, "OrgIDLocalPatientId") & _b(
    ds.tables[MPI]["OrgIDLocalPatientId"] != (ds.tables[H]["OrgIDProv"].iloc[0] if len(ds.tables[H]) else "")),
    _setter(MPI, "OrgIDLocalPatientId", "ZZZ99"), field="OrgIDLocalPatientId", cols=("OrgIDLocalPatientId",),
    needs=((H, "OrgIDProv"),))
blank("IDS00111", MPI, "NHSNumber")
alnum("IDS00115", MPI, "NHSNumberStatus", 2, 2)
in_set("IDS00116")
both("IDS00117", MPI, lambda ds: ~_blank_of(ds, MPI, "NHSNumber") & _eq(ds, MPI, "NHSNumberStatus", ["07"]),
     ("NHSNumber", "NHSNumberStatus"), "NHSNumberStatus")
blank("IDS00162", MPI, "NHSNumberStatus")
both("IDS00118", MPI, lambda ds: _blank_of(ds, MPI, "NHSNumber") & _blank_of(ds, MPI, "NHSNumberStatus"),
     ("NHSNumber", "NHSNumberStatus"), "NHSNumberStatus")
both("IDS00161", MPI, lambda ds: _blank_of(ds, MPI, "NHSNumber") & _eq(ds, MPI, "NHSNumberStatus", ["01", "02"]),
     ("NHSNumber", "NHSNumberStatus"), "NHSNumberStatus")
blank("IDS00120", MPI, "PersonBirthDate")
blank("IDS00123", MPI, "Postcode")
blank("IDS00129", MPI, "Gender")
alnum("IDS00130", MPI, "Gender", 1, 1)
in_set("IDS00131")
alnum("IDS00132", MPI, "EthnicCategory", 0, 2)
in_set("IDS00133")
alnum("IDS00159", MPI, "ExBAFIndicator", 2, 2)
in_set("IDS00160")
alnum("IDS00138", MPI, "LanguageCodePreferred", 2, 2)
in_set("IDS00139")
alnum("IDS00157", MPI, "EduEstabTypeIAPT", 1, 1)
in_set("IDS00158")

# ---- IDS002 GP ------------------------------------------------------------------------------------------------
orphan("IDS00220", GP, "LocalPatientId", MPI, "LocalPatientId", "NOPATIENT")
unique("IDS00221", GP, ["LocalPatientId", "GMPCodeReg", "StartDateGMPRegistration"])
unique_where_null("IDS00222", GP, "LocalPatientId", "EndDateGMPRegistration")


def _no_next_practice(ds: Dataset) -> Mask:
    """IDS00223: a registration that ended has no record of the same patient starting at another practice on the
    end date or the day after."""
    df = ds.tables[GP]
    ended = df["EndDateGMPRegistration"].notna().to_numpy()
    if not ended.any():
        return np.zeros(len(df), bool)
    pid = df["LocalPatientId"].astype(str).to_numpy()
    starts = pd.DataFrame({"pid": pid, "start": _dates(df["StartDateGMPRegistration"]),
                           "gmp": df["GMPCodeReg"].astype(object).to_numpy()}).dropna(subset=["start"])
    out = np.zeros(len(df), bool)
    for i in np.flatnonzero(ended):       # ended registrations are few: one look-up each
        end = _dates(df["EndDateGMPRegistration"])[i]
        mine = starts[(starts["pid"] == pid[i]) & (starts["gmp"] != df["GMPCodeReg"].astype(object).iloc[i])]
        out[i] = not ((mine["start"] >= end) & (mine["start"] <= end + np.timedelta64(1, "D"))).any()
    return out


custom("IDS00223", GP, _no_next_practice,
       cols=("LocalPatientId", "GMPCodeReg", "StartDateGMPRegistration", "EndDateGMPRegistration"))
blank("IDS00201", GP, "LocalPatientId")
alnum("IDS00202", GP, "LocalPatientId", 0, 20)
blank("IDS00203", GP, "GMPCodeReg")
alnum("IDS00204", GP, "GMPCodeReg", 6, 6)
date_fmt("IDS00210", GP, "StartDateGMPRegistration")
after("IDS00211", GP, "StartDateGMPRegistration", "end+1d")
before_birth("IDS00212", GP, "StartDateGMPRegistration")
date_fmt("IDS00213", GP, "EndDateGMPRegistration")
before("IDS00214", GP, "EndDateGMPRegistration", "start")
after("IDS00215", GP, "EndDateGMPRegistration", "end")
before_col("IDS00216", GP, "EndDateGMPRegistration", "StartDateGMPRegistration")

# ---- IDS004 employment status ---------------------------------------------------------------------------------
orphan("IDS00401", EMP, "LocalPatientId", MPI, "LocalPatientId")
unique("IDS00402", EMP, ["LocalPatientId", "EmployStatusRecDate"])
unique_where_null("IDS00440", EMP, "LocalPatientId", "EmployStatusRecDate")
blank("IDS00403", EMP, "LocalPatientId")
alnum("IDS00404", EMP, "LocalPatientId", 0, 20)
blank("IDS00405", EMP, "EmployStatus")
alnum("IDS00406", EMP, "EmployStatus", 2, 2)
in_set("IDS00407")
date_fmt("IDS00408", EMP, "EmployStatusRecDate")
blank("IDS00412", EMP, "EmployStatusRecDate")
after("IDS00436", EMP, "EmployStatusRecDate", "end")
before_birth("IDS00438", EMP, "EmployStatusRecDate")
for _code, _col_name in (("IDS00410", "WeekHoursWorked"),):
    alnum(_code, EMP, _col_name, 2, 2)
in_set("IDS00411")
for _fmt_code, _set_code, _col_name in (("IDS00413", "IDS00414", "SelfEmployInd"),
                                        ("IDS00415", "IDS00416", "SickAbsenceInd"),
                                        ("IDS00417", "IDS00418", "SSPInd"),
                                        ("IDS00419", "IDS00420", "BenefitRecInd"),
                                        ("IDS00423", "IDS00424", "ESAInd"),
                                        ("IDS00425", "IDS00426", "UCInd"),
                                        ("IDS00427", "IDS00428", "PIPInd")):
    alnum(_fmt_code, EMP, _col_name, 1, 1)
    in_set(_set_code)
alnum("IDS00431", EMP, "EmpSupportInd", 0, 2)
in_set("IDS00432")
both("IDS00433", EMP, lambda ds: _populated(ds, EMP, "EmpSupportReferral") & _blank_of(ds, EMP, "EmpSupportInd"),
     ("EmpSupportReferral", "EmpSupportInd"), "EmpSupportInd")
date_fmt("IDS00434", EMP, "EmpSupportReferral")
both("IDS00435", EMP, lambda ds: _eq(ds, EMP, "EmpSupportInd", ["Y"]) & ~_populated(ds, EMP, "EmpSupportReferral"),
     ("EmpSupportReferral", "EmpSupportInd"), "EmpSupportReferral")
after("IDS00437", EMP, "EmpSupportReferral", "end")
before_birth("IDS00439", EMP, "EmpSupportReferral")

# ---- IDS007 disability ----------------------------------------------------------------------------------------
orphan("IDS00701", DIS, "LocalPatientId", MPI, "LocalPatientId")
unique("IDS00702", DIS, ["LocalPatientId", "DisabCode"])
blank("IDS00703", DIS, "LocalPatientId")
alnum("IDS00704", DIS, "LocalPatientId", 0, 20)
blank("IDS00705", DIS, "DisabCode")
alnum("IDS00706", DIS, "DisabCode", 2, 2)
in_set("IDS00707")

# ---- IDS011 social and personal circumstances -----------------------------------------------------------------
orphan("IDS01101", SOC, "LocalPatientId", MPI, "LocalPatientId")
unique("IDS01102", SOC, ["LocalPatientId", "SocPerCircumstanceRecDate", "SocPerCircumstance"])
blank("IDS01103", SOC, "LocalPatientId")
alnum("IDS01104", SOC, "LocalPatientId", 0, 20)
blank("IDS01108", SOC, "SocPerCircumstance")
snomed("IDS01109", SOC, "SocPerCircumstance")
blank("IDS01110", SOC, "SocPerCircumstanceRecDate")
date_fmt("IDS01106", SOC, "SocPerCircumstanceRecDate")
after("IDS01107", SOC, "SocPerCircumstanceRecDate", "end")
before_birth("IDS01111", SOC, "SocPerCircumstanceRecDate")

# ---- IDS012 overseas visitor charging category ----------------------------------------------------------------
orphan("IDS01201", OVS, "LocalPatientId", MPI, "LocalPatientId")
unique("IDS01202", OVS, ["LocalPatientId", "OvsVisChCat", "OvsVisChCatAppDate"])
blank("IDS01203", OVS, "LocalPatientId")
alnum("IDS01204", OVS, "LocalPatientId", 0, 20)
blank("IDS01205", OVS, "OvsVisChCat")
alnum("IDS01206", OVS, "OvsVisChCat", 1, 1)
in_set("IDS01207")
date_fmt("IDS01208", OVS, "OvsVisChCatAppDate")
after("IDS01209", OVS, "OvsVisChCatAppDate", "end")
blank("IDS01210", OVS, "OvsVisChCatAppDate")
before_birth("IDS01211", OVS, "OvsVisChCatAppDate")

# ---- IDS101 referral ------------------------------------------------------------------------------------------
orphan("IDS10101", REF, "LocalPatientId", MPI, "LocalPatientId", "NOPATIENT")
unique("IDS10103", REF, ["ServiceRequestId"], bad=_copy_row1_to_row0(REF, ["ServiceRequestId"]))
blank("IDS10104", REF, "ServiceRequestId")
alnum("IDS10105", REF, "ServiceRequestId", 0, 20)
blank("IDS10106", REF, "LocalPatientId")
alnum("IDS10107", REF, "LocalPatientId", 0, 20)
blank("IDS10108", REF, "OrgIDComm")
alnum("IDS10109", REF, "OrgIDComm", 3, 5)
blank("IDS10111", REF, "ReferralRequestReceivedDate")
date_fmt("IDS10112", REF, "ReferralRequestReceivedDate")
after("IDS10113", REF, "ReferralRequestReceivedDate", "end")
before_birth("IDS10140", REF, "ReferralRequestReceivedDate")
alnum("IDS10117", REF, "SourceOfReferralIAPT", 2, 2)
in_set("IDS10118")
fmt("IDS10132", REF, "OnsetDate", r"[0-9]{4}(-|/)(0[1-9]|1[0,1,2])", "2020-13")
# a warning when the onset is written YYYY/MM (column_not_in_format_rule: the slash form "matches")
custom("IDS10142", REF, lambda ds: _b(ds.tables[REF]["OnsetDate"].astype("string[pyarrow]").str.fullmatch(
    r"[0-9]{4}/(0[1-9]|1[0,1,2])")), field="OnsetDate", cols=("OnsetDate",))


def _onset_before_birth(ds: Dataset) -> Mask:
    """IDS10141: YYYY-MM onset before the birth month (an onset not in YYYY-MM, or no birth date: passes)."""
    onset = ds.tables[REF]["OnsetDate"].astype("string[pyarrow]")
    ok = _b(onset.str.fullmatch(r"[0-9]{4}-(0[1-9]|1[0,1,2])"))
    year = pd.to_numeric(onset.str.slice(0, 4), errors="coerce").to_numpy(dtype=float)
    month = pd.to_numeric(onset.str.slice(5, 7), errors="coerce").to_numpy(dtype=float)
    birth = pd.Series(_take(_dates(ds.tables[MPI]["PersonBirthDate"]),
                            _parent_row(ds, REF, "LocalPatientId", MPI, "LocalPatientId"), np.datetime64("NaT")))
    by, bm = birth.dt.year.to_numpy(dtype=float), birth.dt.month.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        early: Mask = ok & ~np.isnan(by) & ((year < by) | ((year == by) & (month < bm)))
    return early


custom("IDS10141", REF, _onset_before_birth, field="OnsetDate", cols=("OnsetDate", "LocalPatientId"),
       needs=((MPI, "PersonBirthDate"),))
alnum("IDS10133", REF, "PrevDiagCondInd", 1, 1)
in_set("IDS10134")
alnum("IDS10135", REF, "EndCode", 2, 2)
in_set("IDS10136")
both("IDS10137", REF, lambda ds: ds.tables[REF]["ServDischDate"].notna().to_numpy() & _blank_of(ds, REF, "EndCode"),
     ("ServDischDate", "EndCode"), "EndCode")
both("IDS10138", REF, lambda ds: ds.tables[REF]["ServDischDate"].isna().to_numpy() & ~_blank_of(ds, REF, "EndCode"),
     ("ServDischDate", "EndCode"), "ServDischDate")
date_fmt("IDS10127", REF, "ServDischDate")
before_col("IDS10128", REF, "ServDischDate", "ReferralRequestReceivedDate")
PEQ_CODES = sorted(c for c, s in scales.scales().items() if s.tool.endswith("PEQ"))


def _discharged_before_without_follow_up(ds: Dataset) -> Mask:
    """IDS10129: discharged before the period with no care contact in it and no PEQ submitted for the referral."""
    ref = ds.tables[REF]
    early = _b(ref["ServDischDate"] < _period_start(ds))
    if not early.any():
        return early
    follow = _has_parent(ds, REF, "ServiceRequestId", CC, "ServiceRequestId") if CC in ds.tables else \
        np.zeros(len(ref), bool)
    if A606 in ds.tables and len(ds.tables[A606]):
        peq = ds.tables[A606][isin(ds.tables[A606]["CodedAssToolType"], PEQ_CODES)]
        follow = follow | isin(ref["ServiceRequestId"], peq["ServiceRequestId"])
    return early & ~follow


custom("IDS10129", REF, _discharged_before_without_follow_up, field="ServDischDate",
       cols=("ServDischDate", "ServiceRequestId"))
after("IDS10139", REF, "ServDischDate", "end")

# ---- IDS105 onward referral -----------------------------------------------------------------------------------
orphan("IDS10510", ONW, "ServiceRequestId", REF, "ServiceRequestId")
unique("IDS10520", ONW, ["ServiceRequestId", "OnwardReferDate", "OnwardReferTime", "OnwardReferReason",
                         "OrgIDReceiving"])
blank("IDS10501", ONW, "ServiceRequestId")
alnum("IDS10502", ONW, "ServiceRequestId", 0, 20)
blank("IDS10503", ONW, "OnwardReferDate")
date_fmt("IDS10504", ONW, "OnwardReferDate")
after("IDS10505", ONW, "OnwardReferDate", "end")
before_parent("IDS10521", ONW, "OnwardReferDate", "ServiceRequestId", REF, "ServiceRequestId",
              "ReferralRequestReceivedDate")
before("IDS10522", ONW, "OnwardReferDate", "start")
time_fmt("IDS10514", ONW, "OnwardReferTime")
alnum("IDS10506", ONW, "OnwardReferReason", 2, 2)
in_set("IDS10507")
alnum("IDS10518", ONW, "OrgIDReceiving", 3, 5)

# ---- IDS108 waiting-time pauses -------------------------------------------------------------------------------
orphan("IDS10801", PAUSE, "ServiceRequestId", REF, "ServiceRequestId")
unique("IDS10802", PAUSE, ["PauseID", "ServiceRequestId"])
blank("IDS10803", PAUSE, "PauseID")
alnum("IDS10804", PAUSE, "PauseID", 0, 5)
blank("IDS10805", PAUSE, "ServiceRequestId")
alnum("IDS10806", PAUSE, "ServiceRequestId", 0, 20)
blank("IDS10807", PAUSE, "PauseStartDate")
date_fmt("IDS10808", PAUSE, "PauseStartDate")
after("IDS10809", PAUSE, "PauseStartDate", "end")
before_parent("IDS10816", PAUSE, "PauseStartDate", "ServiceRequestId", REF, "ServiceRequestId",
              "ReferralRequestReceivedDate")
date_fmt("IDS10810", PAUSE, "PauseEndDate")
before("IDS10811", PAUSE, "PauseEndDate", "start")
after("IDS10812", PAUSE, "PauseEndDate", "end")
before_col("IDS10813", PAUSE, "PauseEndDate", "PauseStartDate")
alnum("IDS10814", PAUSE, "PauseReason", 2, 2)
in_set("IDS10815")
blank("IDS10817", PAUSE, "PauseReason")

# ---- IDS201 care contact --------------------------------------------------------------------------------------
orphan("IDS20142", CC, "ServiceRequestId", REF, "ServiceRequestId", "NOREFERRAL")
unique("IDS20143", CC, ["CareContactId"], bad=_copy_row1_to_row0(CC, ["CareContactId"]))
blank("IDS20101", CC, "CareContactId")
alnum("IDS20102", CC, "CareContactId", 0, 20)
blank("IDS20103", CC, "ServiceRequestId")
alnum("IDS20104", CC, "ServiceRequestId", 0, 20)
blank("IDS20106", CC, "CareContDate")
date_fmt("IDS20107", CC, "CareContDate")
after("IDS20108", CC, "CareContDate", "end")
before("IDS20170", CC, "CareContDate", "start")
before_parent("IDS20171", CC, "CareContDate", "ServiceRequestId", REF, "ServiceRequestId",
              "ReferralRequestReceivedDate")
time_fmt("IDS20109", CC, "CareContTime")
alnum("IDS20146", CC, "OrgIDComm", 3, 5)
alnum("IDS20150", CC, "PlannedCareContIndicator", 1, 1)
in_set("IDS20151")
alnum("IDS20127", CC, "AttendOrDNACode", 1, 1)
in_set("IDS20128")
alnum("IDS20152", CC, "Cancellation", 1, 1)
in_set("IDS20153")
numeric("IDS20114", CC, "ClinContDurOfCareCont", 0, 4)
blank("IDS20115", CC, "IAPTLTCServiceInd")
alnum("IDS20116", CC, "IAPTLTCServiceInd", 1, 1)
in_set("IDS20117")
blank("IDS20154", CC, "AppType")
alnum("IDS20155", CC, "AppType", 2, 2)
in_set("IDS20156")
alnum("IDS20119", CC, "ConsMechanism", 2, 2)
in_set("IDS20120")
alnum("IDS20157", CC, "IntEnabledTherProg", 0, 20)
alnum("IDS20125", CC, "CareContPatientTherMode", 1, 1)
in_set("IDS20126")
numeric("IDS20158", CC, "NumGroupTherParticipants", 0, 3)
numeric("IDS20159", CC, "NumGroupTherFacilitators", 0, 2)
alnum("IDS20160", CC, "PsychMed", 2, 2)
in_set("IDS20161")
alnum("IDS20121", CC, "ActLocTypeCode", 3, 3)
in_set("IDS20122")
alnum("IDS20148", CC, "SiteIDOfTreat", 5, 9)
alnum("IDS20162", CC, "LanguageCodeTreat", 2, 2)
in_set("IDS20163")
alnum("IDS20164", CC, "InterpreterPresentInd", 1, 1)
in_set("IDS20165")
both("IDS20166", CC, lambda ds: _eq(ds, CC, "AttendOrDNACode", ["2"]) & _blank_of(ds, CC, "Cancellation"),
     ("AttendOrDNACode", "Cancellation"), "Cancellation")
both("IDS20167", CC, lambda ds: ~_blank_of(ds, CC, "AttendOrDNACode") & ~_eq(ds, CC, "AttendOrDNACode", ["2"]) &
     ~_blank_of(ds, CC, "Cancellation"), ("AttendOrDNACode", "Cancellation"), "Cancellation")


def _dup_attended(ds: Dataset) -> Mask:
    """IDS20168: more than one attended (5 or 6) contact for a referral at the same date and time: every contact of
    that referral, date and time is flagged (as the receiving side's window over them is)."""
    att = _eq(ds, CC, "AttendOrDNACode", ["5", "6"])
    if not att.any():
        return np.zeros(len(att), bool)
    key, n = _group(ds, CC, ["ServiceRequestId", "CareContDate", "CareContTime"])
    key, n = _compact(key) if n > 4 * len(key) + 1024 else (key, n)
    return np.bincount(key[att], minlength=n)[key] > 1


custom("IDS20168", CC, _dup_attended, cols=("ServiceRequestId", "CareContDate", "CareContTime", "AttendOrDNACode"))
custom("IDS20169", CC, lambda ds: _eq(ds, CC, "AttendOrDNACode", ["5", "6"]) &
       ~_has_parent(ds, CC, "CareContactId", ACT, "CareContactId"), cols=("AttendOrDNACode", "CareContactId"),
       needs=((ACT, "CareContactId"),))

# ---- IDS202 care activity -------------------------------------------------------------------------------------
orphan("IDS20224", ACT, "CareContactId", CC, "CareContactId", "NOCONTACT")
unique("IDS20225", ACT, ["CareActId"], bad=_copy_row1_to_row0(ACT, ["CareActId"]))
blank("IDS20201", ACT, "CareActId")
alnum("IDS20202", ACT, "CareActId", 0, 20)
blank("IDS20203", ACT, "CareContactId")
alnum("IDS20204", ACT, "CareContactId", 0, 20)
alnum("IDS20205", ACT, "CarePersLocalId", 0, 20)
numeric("IDS20206", ACT, "ClinContactDurOfCareAct", 0, 4)
snomed("IDS20230", ACT, "CodeProcAndProcStatus", hi=56)
alnum("IDS20212", ACT, "FindSchemeInUse", 2, 2)
in_set("IDS20213")
both("IDS20214", ACT, lambda ds: ~_blank_of(ds, ACT, "CodeFind") & ~_eq(ds, ACT, "FindSchemeInUse", ["01", "04"]),
     ("FindSchemeInUse", "CodeFind"), "CodeFind")
alnum("IDS20215", ACT, "CodeFind", 4, 18)
both("IDS20216", ACT, lambda ds: ~_blank_of(ds, ACT, "FindSchemeInUse") & _blank_of(ds, ACT, "CodeFind"),
     ("FindSchemeInUse", "CodeFind"), "CodeFind")
find_code("IDS20228", ACT, "FindSchemeInUse", "CodeFind")
snomed("IDS20231", ACT, "CodeObs")
alnum("IDS20222", ACT, "ObsValue", 0, 10)
alnum("IDS20223", ACT, "UnitMeasure", 0, 10)
both("IDS20226", ACT, lambda ds: ~_blank_of(ds, ACT, "ObsValue") & _blank_of(ds, ACT, "UnitMeasure"),
     ("ObsValue", "UnitMeasure"), "UnitMeasure")

# ---- IDS205 internet-enabled therapy log ----------------------------------------------------------------------
orphan("IDS20501", NET, "ServiceRequestId", REF, "ServiceRequestId")
unique("IDS20519", NET, ["ServiceRequestId", "StartDateIntEnabledTherLog", "EndDateIntEnabledTherLog",
                         "IntEnabledTherProg", "DurationIntEnabledTher", "CarePersLocalId"])
blank("IDS20502", NET, "ServiceRequestId")
alnum("IDS20503", NET, "ServiceRequestId", 0, 20)
blank("IDS20504", NET, "StartDateIntEnabledTherLog")
date_fmt("IDS20505", NET, "StartDateIntEnabledTherLog")
after("IDS20506", NET, "StartDateIntEnabledTherLog", "end")
before_parent("IDS20520", NET, "StartDateIntEnabledTherLog", "ServiceRequestId", REF, "ServiceRequestId",
              "ReferralRequestReceivedDate")
blank("IDS20507", NET, "EndDateIntEnabledTherLog")
date_fmt("IDS20508", NET, "EndDateIntEnabledTherLog")
before("IDS20509", NET, "EndDateIntEnabledTherLog", "start")
after("IDS20510", NET, "EndDateIntEnabledTherLog", "end")
before_col("IDS20511", NET, "EndDateIntEnabledTherLog", "StartDateIntEnabledTherLog")
blank("IDS20512", NET, "IntEnabledTherProg")
alnum("IDS20513", NET, "IntEnabledTherProg", 0, 20)
blank("IDS20514", NET, "DurationIntEnabledTher")
numeric("IDS20515", NET, "DurationIntEnabledTher", 0, 4)
alnum("IDS20516", NET, "CarePersLocalId", 0, 20)
alnum("IDS20517", NET, "IntegratedSoftwareInd", 1, 1)
in_set("IDS20518")

# ---- IDS602 long-term conditions ------------------------------------------------------------------------------
orphan("IDS60201", LTC, "ServiceRequestId", REF, "ServiceRequestId")
unique("IDS60210", LTC, ["ServiceRequestId", "LongTermCondition"])
blank("IDS60202", LTC, "ServiceRequestId")
alnum("IDS60203", LTC, "ServiceRequestId", 0, 20)
blank("IDS60204", LTC, "FindSchemeInUse")
alnum("IDS60205", LTC, "FindSchemeInUse", 2, 2)
in_set("IDS60206")
blank("IDS60207", LTC, "LongTermCondition")
alnum("IDS60208", LTC, "LongTermCondition", 4, 18)
find_code("IDS60209", LTC, "FindSchemeInUse", "LongTermCondition")

# ---- IDS603 presenting complaints -----------------------------------------------------------------------------
orphan("IDS60301", PRES, "ServiceRequestId", REF, "ServiceRequestId", "NOREFERRAL")
unique("IDS60302", PRES, ["ServiceRequestId", "PresCompDate", "PresComp"])
blank("IDS60303", PRES, "ServiceRequestId")
alnum("IDS60304", PRES, "ServiceRequestId", 0, 20)
blank("IDS60305", PRES, "FindSchemeInUse")
alnum("IDS60306", PRES, "FindSchemeInUse", 2, 2)
in_set("IDS60307")
blank("IDS60308", PRES, "PresComp")
alnum("IDS60309", PRES, "PresComp", 4, 18)
find_code("IDS60310", PRES, "FindSchemeInUse", "PresComp")
alnum("IDS60311", PRES, "PresCompCodSig", 1, 1)
in_set("IDS60312")
blank("IDS60315", PRES, "PresCompCodSig")
date_fmt("IDS60313", PRES, "PresCompDate")
after("IDS60314", PRES, "PresCompDate", "end")
before_birth("IDS60316", PRES, "PresCompDate")

# ---- IDS606 / IDS607 coded scored assessments -----------------------------------------------------------------


def _pairs(ds: Dataset, table: str, fn: Callable[[str | None, str | None], bool]) -> Mask:
    """``not fn(tool, score)`` per row, decided once per distinct (tool, score) pair (a null, or a value that is
    not text, is passed as None). The pair is one integer made of the two columns' codes: a national month has
    millions of scores but a few hundred distinct pairs, so nothing per row is a Python object."""
    df = ds.tables[table]
    if not len(df):
        return np.zeros(0, bool)
    tools, tool_values = pd.factorize(df["CodedAssToolType"])      # null: -1
    scores, score_values = pd.factorize(df["PersScore"])
    width = len(score_values) + 1
    pair: npt.NDArray[np.int64] = (tools.astype(np.int64) + 1) * width + (scores.astype(np.int64) + 1)
    row_pair, distinct = pd.factorize(pair)

    def text(values: Any, code: int) -> str | None:
        v = values[code] if code >= 0 else None
        return v if isinstance(v, str) else None

    bad = np.array([not fn(text(tool_values, int(p) // width - 1), text(score_values, int(p) % width - 1))
                    for p in distinct], dtype=bool)
    return bad[row_pair]


SCALE_CODES = sorted(scales.codes())
for _t, (c_dup, c_blank_tool, c_fmt_tool, c_ref_tool, c_blank_score, c_fmt_score, c_range, c_score_fmt) in {
    A606: ("IDS60616", "IDS60603", "IDS60604", "IDS60613", "IDS60605", "IDS60606", "IDS60607", "IDS60615"),
    A607: ("IDS60709", "IDS60703", "IDS60704", "IDS60710", "IDS60705", "IDS60706", "IDS60707", "IDS60711"),
}.items():
    if _t == A606:
        unique(c_dup, _t, ["ServiceRequestId", "AssToolCompDate", "AssToolCompTime", "CodedAssToolType"],
               nulls_unique=False)
    else:
        unique(c_dup, _t, ["CareActId", "CodedAssToolType"])
    blank(c_blank_tool, _t, "CodedAssToolType")
    numeric(c_fmt_tool, _t, "CodedAssToolType", 6, 18)
    custom(c_ref_tool, _t, (lambda t: lambda ds: ~_blank_of(ds, t, "CodedAssToolType") &
                            ~isin(ds.tables[t]["CodedAssToolType"], SCALE_CODES))(_t),
           _setter(_t, "CodedAssToolType", "123456789"), field="CodedAssToolType", single_field=True,
           cols=("CodedAssToolType",))
    blank(c_blank_score, _t, "PersScore")
    alnum(c_fmt_score, _t, "PersScore", 0, 5)
    custom(c_range, _t, (lambda t: lambda ds: _pairs(ds, t, scales.in_range))(_t),
           _setter(_t, "PersScore", "31"), field="PersScore", cols=("CodedAssToolType", "PersScore"))
    custom(c_score_fmt, _t, (lambda t: lambda ds: _pairs(ds, t, scales.format_ok))(_t),
           _setter(_t, "PersScore", "1.5"), field="PersScore", cols=("CodedAssToolType", "PersScore"))

orphan("IDS60612", A606, "ServiceRequestId", REF, "ServiceRequestId", "NOREFERRAL")
blank("IDS60601", A606, "ServiceRequestId")
alnum("IDS60602", A606, "ServiceRequestId", 0, 20)
blank("IDS60608", A606, "AssToolCompDate")
date_fmt("IDS60609", A606, "AssToolCompDate")
after("IDS60610", A606, "AssToolCompDate", "end")
before("IDS60618", A606, "AssToolCompDate", "start")
before_parent("IDS60617", A606, "AssToolCompDate", "ServiceRequestId", REF, "ServiceRequestId",
              "ReferralRequestReceivedDate")
time_fmt("IDS60614", A606, "AssToolCompTime")
orphan("IDS60708", A607, "CareActId", ACT, "CareActId", "NOACTIVITY")
blank("IDS60701", A607, "CareActId")
alnum("IDS60702", A607, "CareActId", 0, 20)

# ---- IDS803 care cluster --------------------------------------------------------------------------------------
orphan("IDS80301", CLUS, "LocalPatientId", MPI, "LocalPatientId")
unique_where_null("IDS80319", CLUS, "LocalPatientId", "EndDateCareClust")
unique("IDS80320", CLUS, ["LocalPatientId", "StartDateCareClust"])
blank("IDS80302", CLUS, "LocalPatientId")
alnum("IDS80303", CLUS, "LocalPatientId", 0, 20)
alnum("IDS80308", CLUS, "AMHCareClustCodeFin", 2, 2)
in_set("IDS80309")
blank("IDS80321", CLUS, "AMHCareClustCodeFin")
blank("IDS80304", CLUS, "StartDateCareClust")
date_fmt("IDS80305", CLUS, "StartDateCareClust")
after("IDS80306", CLUS, "StartDateCareClust", "end")
time_fmt("IDS80307", CLUS, "StartTimeCareClust")
date_fmt("IDS80314", CLUS, "EndDateCareClust")
before("IDS80315", CLUS, "EndDateCareClust", "start")
after("IDS80316", CLUS, "EndDateCareClust", "end")
before_col("IDS80317", CLUS, "EndDateCareClust", "StartDateCareClust")
time_fmt("IDS80318", CLUS, "EndTimeCareClust")

# ---- IDS902 care personnel qualifications ---------------------------------------------------------------------
unique("IDS90210", QUAL, ["CarePersLocalId", "QualAttainLevelIAPT"])
blank("IDS90201", QUAL, "CarePersLocalId")
alnum("IDS90202", QUAL, "CarePersLocalId", 0, 20)
blank("IDS90203", QUAL, "QualAttainLevelIAPT")
alnum("IDS90204", QUAL, "QualAttainLevelIAPT", 2, 2)
in_set("IDS90205")
date_fmt("IDS90206", QUAL, "QualAwardedDate")
after("IDS90207", QUAL, "QualAwardedDate", "end")
before("IDS90212", QUAL, "QualAwardedDate", "2005-01-01")
before_col("IDS90213", QUAL, "QualAwardedDate", "QualPlannedCompletionDate")
both("IDS90214", QUAL, lambda ds: ~_populated(ds, QUAL, "QualAwardedDate") &
     ~_populated(ds, QUAL, "QualPlannedCompletionDate"), ("QualAwardedDate", "QualPlannedCompletionDate"),
     "QualAwardedDate")
date_fmt("IDS90208", QUAL, "QualPlannedCompletionDate")
before("IDS90209", QUAL, "QualPlannedCompletionDate", "start")
after("IDS90215", QUAL, "QualPlannedCompletionDate", "end+2y")


# ---- not implemented, and why -------------------------------------------------------------------------------

_REFERENCE_DATA = "needs NHS England's reference data (organisation, site, GP practice or postcode tables)"
_PORTAL = "compares with the SDCS portal's login or upload details, which only SDCS has"
_NOT_V21 = "the field is not in the v2.1 data set (iapt_v2_1_fields.tsv), so a v2.1 file never holds it"
#: catalogue rules not implemented here, and why (every other rule is in ``REGISTRY``, or, IDSREJ101, in screen)
NOT_IMPLEMENTED: dict[str, str] = {
    "IDSREJ101": "decided by screen() from the counts before and after screening (no record check of its own)",
    "IDS00030": _PORTAL, "IDS00033": _PORTAL,
    "IDS00034": _REFERENCE_DATA, "IDS00154": _REFERENCE_DATA, "IDS00156": _REFERENCE_DATA,
    "IDS00125": _REFERENCE_DATA, "IDS00206": _REFERENCE_DATA, "IDS00219": _REFERENCE_DATA,
    "IDS10110": _REFERENCE_DATA, "IDS10519": _REFERENCE_DATA, "IDS20147": _REFERENCE_DATA,
    "IDS20149": _REFERENCE_DATA,
    "IDS00155": _NOT_V21 + " (OrgIDResidenceResp)",
    "IDS00217": _NOT_V21 + " (OrgIDGPPrac)", "IDS00218": _NOT_V21 + " (OrgIDGPPrac)",
    "IDS00421": _NOT_V21 + " (JSAInd)", "IDS00422": _NOT_V21 + " (JSAInd)",
    "IDS00429": _NOT_V21 + " (OtherBenefitInd)", "IDS00430": _NOT_V21 + " (OtherBenefitInd)",
}


def coverage() -> pd.DataFrame:
    """Catalogue rules per table: how many, how many implemented, and every one not implemented with why."""
    rows = []
    for code, (sev, prefix, _msg) in CATALOGUE.items():
        rows.append({"table": prefix, "rule": code, "severity": sev, "implemented": code in REGISTRY,
                     "why_not": NOT_IMPLEMENTED.get(code, "")})
    return pd.DataFrame(rows)


# ---- applying the rules ---------------------------------------------------------------------------------------

#: Reject-file rules that single out records: screened (blanked or removed) before writing.
FILE_RECORD_CODES = ("IDSREJ006", "IDSREJ007", "IDSREJ008", "IDSREJ009", "IDSREJ010")
#: The reject-group rules about a patient's groups: decided with the cascade, after the record rules
GROUP_CODES = {"IDS00145": (MPI, GP), "IDS00146": (MPI, REF)}
#: quarantine code for a record removed with its parent where the catalogue has no rule for its table
NO_PARENT = "parent_removed"


def _key_fields() -> set[tuple[str, str]]:
    """Fields that identify or link records (the national primary and foreign keys, the pause id): never blanked."""
    out = {(t, f) for t, fs in NATIONAL_FIELDS.items() for f, (_typ, key) in fs.items() if key}
    return out | {(PAUSE, "PauseID"), (QUAL, "CarePersLocalId"), (ACT, "CareActId"), (A607, "CareActId")}


KEY_FIELDS = _key_fields()


def optional(table: str, col: str) -> bool:
    """Nationally, a blank in this field is at most a warning (its "is blank" rule is a WARNING, or it has none),
    and it is not a key."""
    if (table, col) in KEY_FIELDS:
        return False
    code = BLANK_RULES.get((table, col))
    return code is None or CATALOGUE[code][0] == WARNING


def action(rule: Rule) -> str:
    """What screening does with a record failing ``rule``: ``count`` (a warning), ``blank`` (the field, see the
    module doc), ``remove`` (the record, quarantined) or ``file`` (a file-level rule)."""
    if rule.file_level:
        return "file"
    if rule.severity == WARNING:
        return "count"
    if rule.severity in (REJECT_RECORD, REJECT_FILE) and rule.single_field and rule.field and \
            optional(rule.table, rule.field):
        return "blank"
    return "remove"


@dataclass(frozen=True)
class Blanked:
    """Cells screening blanked: one rule, one column, the records (opaque ids) whose value failed it."""

    table: str
    column: str
    rule_code: str
    record_ids: tuple[str, ...]

    def items(self) -> list[Quarantined]:
        """Report entries (quarantine table and CSV): the record, the rule, and that the field was blanked."""
        why = f"blanked {self.column}: {CATALOGUE[self.rule_code][2]}"
        return [Quarantined(self.table, r, self.rule_code, why) for r in self.record_ids]


@dataclass
class ScreenResult:
    """What screening did: counts per rule, quarantined (removed) records, blanked cells, file-level failures."""

    failures: dict[str, int] = field(default_factory=dict)     # code -> failing records (all severities)
    quarantined: list[Quarantined] = field(default_factory=list)
    blanked: list[Blanked] = field(default_factory=list)
    file_failures: list[str] = field(default_factory=list)     # reject-file codes still failing after screening
    removed: dict[str, int] = field(default_factory=dict)      # table -> records removed
    seconds: dict[str, float] = field(default_factory=dict)    # code -> time to evaluate (benchmarks)

    @property
    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for q in self.quarantined:
            out[q.reason_code] = out.get(q.reason_code, 0) + 1
        return dict(sorted(out.items()))

    @property
    def blanked_by_rule(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.blanked:
            out[b.rule_code] = out.get(b.rule_code, 0) + len(b.record_ids)
        return dict(sorted(out.items()))

    @property
    def blanked_items(self) -> list[Quarantined]:
        return [q for b in self.blanked for q in b.items()]


def evaluate(ds: Dataset, codes: list[str] | None = None) -> dict[str, Mask | bool]:
    """Run rules (all by default) without changing anything: code -> mask (record rules) or bool (file). A rule
    whose table or columns the data set does not carry gives an all-False mask."""
    out: dict[str, Mask | bool] = {}
    for code in (codes or implemented()):
        r = REGISTRY[code]
        out[code] = bool(r.check(ds)) if r.file_level else r.mask(ds)
    return out


def _items(table: str, rids: pd.Series, code: str) -> list[Quarantined]:
    msg = CATALOGUE[code][2] if code in CATALOGUE else "removed with the record it belongs to"
    return [Quarantined(table, str(r), code, msg) for r in rids.tolist()]


def _blank_cells(ds: Dataset, table: str, col: str, mask: Mask) -> None:
    """Set ``table[col]`` to null where ``mask`` (same dtype: a categorical stays one, text stays Arrow text)."""
    df = ds.tables[table]
    df[col] = df[col].mask(pd.Series(mask, index=df.index))


def _group_failures(ds: Dataset) -> dict[str, Mask]:
    """Records without their parent (every orphan rule) or, for a patient, without an IDS002 / IDS101 group."""
    out: dict[str, Mask] = {}
    for table, code in ORPHAN_CODE.items():
        r = REGISTRY[code]
        if r.applies(ds) and len(ds.tables[table]):
            m = r.mask(ds)
            if m.any():
                out[code] = m
    for code in GROUP_CODES:
        r = REGISTRY[code]
        if r.applies(ds) and len(ds.tables[MPI]):
            m = r.mask(ds)
            if m.any():
                out[code] = m
    return out


def screen(ds: Dataset, only: set[str] | None = None) -> ScreenResult:
    """Validate ``ds`` and change it, in place, so that nothing in it is rejected; see the module doc.

    Order: (1) the blankable rules, whose failing cells are blanked (then every other rule sees the blank, as the
    receiving side would: a blanked NHS number is counted under IDS00111, say); (2) the other record rules:
    warnings counted, rejects removed and quarantined; (3) the cascade of what hangs off removed records, and the
    reject-group rules (a record without its parent, a patient without a GP or referral group) to a fixed point;
    (4) the file-level rules. ``only`` restricts the record rules evaluated (benchmarks compare like with like).
    """
    res = ScreenResult()
    before = ds.counts()
    skip = set(ORPHAN_CODE.values()) | set(GROUP_CODES)
    record_rules = [r for r in REGISTRY.values() if not r.file_level and r.code not in skip
                    and (only is None or r.code in only) and r.applies(ds)]
    for r in (r for r in record_rules if action(r) == "blank"):
        t0 = time.perf_counter()
        m = r.mask(ds)
        res.seconds[r.code] = time.perf_counter() - t0
        if m.any():
            res.failures[r.code] = int(m.sum())
            blanked = tuple(str(x) for x in ds.tables[r.table]["_rid"][m].tolist())
            res.blanked.append(Blanked(r.table, r.field or "", r.code, blanked))
            _blank_cells(ds, r.table, r.field or "", m)
    drop_by_table: dict[str, Mask] = {}
    for r in (r for r in record_rules if action(r) != "blank"):
        t0 = time.perf_counter()
        m = r.mask(ds)
        res.seconds[r.code] = time.perf_counter() - t0
        if not m.any():
            continue
        res.failures[r.code] = int(m.sum())
        if action(r) == "remove":
            res.quarantined += _items(r.table, ds.tables[r.table]["_rid"][m], r.code)
            drop_by_table[r.table] = drop_by_table.get(r.table, np.zeros(len(m), bool)) | m
    gone = drop_by_table
    for _ in range(len(ds.tables) + 2):      # the cascade, then the group rules, until nothing more goes
        for table, rids in cascade(ds, gone).items():   # the rejects and their dependants, one filter each
            code = ORPHAN_CODE.get(table, "IDS00146" if table == MPI else NO_PARENT)
            res.quarantined += _items(table, rids, code)
            res.failures[code] = res.failures.get(code, 0) + len(rids)
        gone = {}
        for code, m in _group_failures(ds).items():
            table = REGISTRY[code].table
            res.quarantined += _items(table, ds.tables[table]["_rid"][m], code)
            res.failures[code] = res.failures.get(code, 0) + int(m.sum())
            gone[table] = gone.get(table, np.zeros(len(m), bool)) | m
        if not gone:
            break
    for r in REGISTRY.values():
        if r.file_level and r.check(ds):
            res.file_failures.append(r.code)
            res.failures[r.code] = 1
    if before.get(MPI) and not len(ds.tables[MPI]):
        res.file_failures.append("IDSREJ101")
        res.failures["IDSREJ101"] = 1
    for code in FILE_RECORD_CODES:  # must hold after screening, or the file would be rejected
        if REGISTRY[code].mask(ds).any():  # pragma: no cover - screening blanked or removed them
            res.file_failures.append(code)
    after_ = ds.counts()
    res.removed = {t: before[t] - after_.get(t, 0) for t in before if before[t] != after_.get(t, 0)}
    ds.keys.clear()   # the writer needs none of it; on a national month the cache holds ~100 MB
    return res
