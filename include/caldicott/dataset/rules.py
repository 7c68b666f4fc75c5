"""Validation of the built tables against the IAPT v2.0 rule catalogue, vectorised.

Each :class:`Rule` carries its catalogue code, severity and message (read from the catalogue file beside
this module, ``iapt_v2_0_validation_rules.tsv``) and a check over whole columns: a record rule returns
a boolean mask over its table (True = the record fails); a file rule returns a bool. Every rule also
knows how to break a valid record (``bad``), so the unit tests check every registered rule with one
passing and one failing record without a hand-written case per rule.

:func:`screen` applies the rules the way NHS England's receiving side would, but *before* the file is
written: records failing a reject-file record check (invalid NHS number, postcode or birth date,
duplicated NHS number or local patient id) or a reject-record rule are removed and quarantined with the
rule's code; records left without their parent are removed with the reject-group code (``IDS10101`` ...);
warnings are counted. What is left passes every implemented reject rule, so the file is not rejected.

String columns are pyarrow-backed, so the format checks run as RE2 regexes in Arrow, not Python loops
(ID20, the identifiers' format, as three cheaper Arrow kernels). Duplicate, parent and look-up checks compare
the id columns' integer codes (:class:`~caldicott.dataset.builder.Keys`): hashing the id strings once per
month instead of once per rule is what makes a 50,000-referral month validate ~20x faster than a row-by-row
loop (bench/RESULTS.md). Values derived from a column (codes, blank masks, format checks) are cached against
the column's immutable Arrow data, so a column that changes is always checked afresh.
"""

from __future__ import annotations

import csv
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from caldicott.dataset.builder import (
    COLUMNS,
    KIND,
    VERSIONS,
    Dataset,
    arrow_data,
    by_code,
    cascade,
    encode_together,
    isin,
)
from caldicott.records.schema import SCORE_RANGES
from caldicott.state.quarantine import Quarantined

CATALOGUE_PATH = Path(__file__).with_name("iapt_v2_0_validation_rules.tsv")


def _catalogue() -> dict[str, tuple[str, str, str]]:
    with CATALOGUE_PATH.open(newline="") as fh:
        return {r["rule_code"]: (r["severity"], r["table_prefix"], r["message"])
                for r in csv.DictReader(fh, delimiter="\t")}


CATALOGUE = _catalogue()
REJECT_FILE, REJECT_GROUP, REJECT_RECORD, WARNING = "REJECT_FILE", "REJECT_GROUP", "REJECT_RECORD", "WARNING"

Check = Callable[[Dataset], "np.ndarray | bool"]
Breaker = Callable[[Dataset], None]


@dataclass(frozen=True)
class Rule:
    code: str
    table: str                    # physical table the mask is over ("FILE" for file rules)
    check: Check
    bad: Breaker                  # makes row 0 of ``table`` (or the file) fail this rule
    file_level: bool = False      # True: check returns one bool for the whole file

    @property
    def severity(self) -> str:
        return CATALOGUE[self.code][0]

    @property
    def message(self) -> str:
        return CATALOGUE[self.code][2]


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

def _b(x) -> np.ndarray:
    """Nullable boolean → numpy bool (NA → False)."""
    if isinstance(x, np.ndarray):
        return x.astype(bool)
    return pd.Series(x).fillna(False).to_numpy(dtype=bool)


def _blank(s: pd.Series) -> np.ndarray:
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


def _b_arrow(x: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow boolean → numpy bool (null → False)."""
    return np.asarray(x.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _blank_of(ds: Dataset, table: str, col: str) -> np.ndarray:
    """``_blank`` of one column, memoised while the column is unchanged (the blank, format and cross-field
    rules all ask for it). For an identifier column (format ID20) only the values that fail ID20 are looked
    at: a valid ID20 value starts with a printable non-space character, so it is never blank."""
    s = ds.tables[table][col]

    def compute() -> np.ndarray:
        if (table, col) not in ID20_COLUMNS or isinstance(s.dtype, pd.CategoricalDtype):
            return _blank(s)
        out = np.zeros(len(s), dtype=bool)
        maybe = np.flatnonzero(~_matches(ds, table, col, ID20))
        if len(maybe):
            out[maybe] = _blank(s.iloc[maybe])
        return out
    return ds.keys.derived("blank", (s,), compute, rows=True)


def _matches(ds: Dataset, table: str, col: str, regex: str) -> np.ndarray:
    """``fullmatch(regex)`` of a text column, row by row (null: False), memoised like the blank mask."""
    s = ds.tables[table][col]
    return ds.keys.derived(f"match:{regex}", (s,), lambda: _fullmatch(s, regex), rows=True)


def _set(ds: Dataset, table: str, col: str, value) -> None:
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


def _setter(table: str, col: str, value) -> Breaker:
    return lambda ds: _set(ds, table, col, value)


def _parent_row(ds: Dataset, table: str, col: str, parent: str, key: str, codes: np.ndarray | None = None
                ) -> np.ndarray:
    """For each row of ``table``: the first row of ``parent`` whose ``key`` equals its ``col`` (-1: none).

    Over the id columns' integer codes (same kind), so no string is hashed; ``codes`` overrides the row codes
    (for a second hop, e.g. a referral's LocalPatientId taken from IDS101).
    """
    if codes is None:
        codes, _ = ds.keys.codes(ds.tables, table, col)
    first = ds.keys.first_row(ds.tables, parent, key)
    if not len(first):
        return np.full(len(codes), -1, dtype=np.int64)
    return np.where(codes >= 0, first[np.maximum(codes, 0)], -1)


def _take(values: np.ndarray, rows: np.ndarray, missing) -> np.ndarray:
    """``values[rows]`` with ``missing`` where the row is -1."""
    if not len(values):
        return np.full(len(rows), missing, dtype=values.dtype)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], missing)


def _lookup_date(ds: Dataset, table: str, col: str, parent: str, key: str, value: str) -> np.ndarray:
    """``parent[value]`` (a date) of each row's parent (first match; NaT when there is none)."""
    vals = ds.tables[parent][value].to_numpy()
    return _take(vals, _parent_row(ds, table, col, parent, key), np.datetime64("NaT"))


def _before_parent_date(table: str, date_col: str, col: str, parent: str, key: str, value: str) -> Check:
    """The row's date is earlier than its parent's ``value`` date (no parent or no date: not flagged)."""
    def check(ds: Dataset) -> np.ndarray:
        mine = ds.tables[table][date_col].to_numpy()
        return np.asarray(mine < _lookup_date(ds, table, col, parent, key, value), dtype=bool)
    return check


def _period_start(ds: Dataset) -> pd.Timestamp:
    return pd.Timestamp(ds.period.first)


def _period_end(ds: Dataset) -> pd.Timestamp:
    """Last day of the period (inclusive), as the data set's date columns are dates."""
    return pd.Timestamp(ds.period.last)


def blank(code: str, table: str, col: str) -> Rule:
    return _register(Rule(code, table, lambda ds: _blank_of(ds, table, col), _setter(table, col, None)))


def _id20(data: pa.ChunkedArray) -> np.ndarray:
    """Exactly ``fullmatch(ID20)`` = 1-20 printable ASCII characters, the first not a space, from three cheap
    Arrow kernels (no regex engine: the id columns are the longest in the file). Null → False."""
    n = pc.binary_length(data)          # bytes = characters when every byte is printable ASCII
    ok = pc.and_(pc.and_(pc.greater_equal(n, 1), pc.less_equal(n, 20)),
                 pc.and_(pc.ascii_is_printable(data), pc.invert(pc.starts_with(data, " "))))
    return _b_arrow(ok)


#: Columns whose format is ID20 (registered by ``fmt``): their blank mask is derived from the format check.
ID20_COLUMNS: set[tuple[str, str]] = set()
#: Formats with an exact equivalent cheaper than the regex (tests check they agree).
FAST_FORMATS = {r"[!-~][ -~]{0,19}": _id20}


def _fullmatch(s: pd.Series, regex: str) -> np.ndarray:
    data = arrow_data(s)
    fast = FAST_FORMATS.get(regex)
    if fast is not None and data is not None and pa.types.is_large_string(data.type):
        return fast(data)
    s = s.astype("string[pyarrow]") if str(s.dtype) != "string" else s
    return _b(s.str.fullmatch(regex))


def fmt(code: str, table: str, col: str, regex: str, bad_value: str) -> Rule:
    """Populated but not matching ``regex`` (the data dictionary's format for the item)."""
    def check(ds: Dataset) -> np.ndarray:
        s = ds.tables[table][col]
        if s.dtype.kind in "M":
            return np.zeros(len(s), bool)
        if isinstance(s.dtype, pd.CategoricalDtype):   # once per distinct value
            cats = pd.Series(s.cat.categories, dtype="string[pyarrow]")
            bad = ~_fullmatch(cats, regex) & ~_blank(cats)
            codes = s.cat.codes.to_numpy()
            return by_code(bad.astype(bool), codes, False)
        return ~_blank_of(ds, table, col) & ~_matches(ds, table, col, regex)
    if regex == ID20:
        ID20_COLUMNS.add((table, col))
    return _register(Rule(code, table, check, _setter(table, col, bad_value)))


def one_of(code: str, table: str, col: str, allowed, bad_value: str) -> Rule:
    """Populated but not one of the code list's values."""
    allowed = list(allowed)

    def check(ds: Dataset) -> np.ndarray:
        s = ds.tables[table][col]
        if isinstance(s.dtype, pd.CategoricalDtype):   # decided per category, then one gather over the rows
            cats = pd.Series(s.cat.categories, dtype="string[pyarrow]")
            return by_code(~_blank(cats) & ~isin(cats, allowed), s.cat.codes.to_numpy(), False)
        return ~_blank_of(ds, table, col) & ~isin(s, allowed)
    return _register(Rule(code, table, check, _setter(table, col, bad_value)))


def _has_parent(ds: Dataset, table: str, col: str, parent: str, parent_col: str) -> np.ndarray:
    """``table[col].isin(parent[parent_col])``: over integer codes when both are id columns of one kind."""
    if KIND.get((table, col)) is not None and KIND.get((table, col)) == KIND.get((parent, parent_col)):
        return ds.keys.isin(ds.tables, table, col, parent, parent_col)
    return isin(ds.tables[table][col], ds.tables[parent][parent_col])


def orphan(code: str, table: str, col: str, parent: str, parent_col: str, bad_value: str) -> Rule:
    """Reject-group rule: no valid parent record (e.g. IDS10101: no IDS001 for this LocalPatientId)."""
    return _register(Rule(code, table, lambda ds: ~_has_parent(ds, table, col, parent, parent_col),
                          _setter(table, col, bad_value)))


def custom(code: str, table: str, check: Check, bad: Breaker, *, file_level: bool = False) -> Rule:
    return _register(Rule(code, table, check, bad, file_level))


# ---- formats and code lists (IAPT v2 data dictionary) ---------------------------------------------------

ORG = r"[A-Z0-9]{3,5}"             # ODS organisation / commissioner / provider code
GMP = r"[A-Z][0-9]{5}"             # General Medical Practice code
ID20 = r"[!-~][ -~]{0,19}"         # an20 identifiers: printable ASCII, first not a space
POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}"
NHS_STATUS = [f"{i:02d}" for i in range(1, 9)]
GENDER = ["1", "2", "9", "X"]
ETHNIC = [*"ABCDEFGHJKLMNPRSZ", "99"]
ATTEND = ["2", "3", "4", "5", "6", "7"]
APP_TYPE = ["01", "02", "03", "04", "05", "06", "07"]
CONS_MECH = ["01", "02", "04", "05", "06", "98"]
FIND_SCHEME = ["01", "02", "03", "04", "05", "06"]
ICD10 = r"[A-Z][0-9]{2}(\.[0-9X]{1,2})?"
SNOMED_RE = r"[0-9]{6,18}"
TOOLS = list(SCORE_RANGES)
EARLIEST_BIRTH = pd.Timestamp("1890-01-01")

H, MPI, GP, REF, CC, ACT = ("IDS000Header", "IDS001MPI", "IDS002GP", "IDS101Referral", "IDS201CareContact",
                            "IDS202CareActivity")
PRES, A606, A607 = "IDS603PresentingComplaints", "IDS606CodedScoreAssessmentRefer", "IDS607CodedScoreAssessmentAct"


# ---- IDS000 header --------------------------------------------------------------------------------------
blank("IDS00001", H, "DatSetVer")
custom("IDS00003", H, lambda ds: ~_blank_of(ds, H, "DatSetVer") &
       ~isin(ds.tables[H]["DatSetVer"], list(VERSIONS)), _setter(H, "DatSetVer", "9.9"))
fmt("IDS00004", H, "DatSetVer", r"[0-9]{1,2}\.[0-9]{1,2}", "two")
blank("IDS00028", H, "OrgIDProv")
fmt("IDS00029", H, "OrgIDProv", ORG, "not a code")
blank("IDS00031", H, "OrgIDSubmit")
fmt("IDS00032", H, "OrgIDSubmit", ORG, "not a code")
blank("IDS00012", H, "PrimSystemInUse")
fmt("IDS00013", H, "PrimSystemInUse", r"[ -~]{1,50}", "x" * 60)
blank("IDS00014", H, "ReportingPeriodStartDate")
custom("IDS00016", H, lambda ds: _b(ds.tables[H]["ReportingPeriodStartDate"] != _period_start(ds)),
       _setter(H, "ReportingPeriodStartDate", "1999-01-01"))
blank("IDS00017", H, "ReportingPeriodEndDate")
custom("IDS00019", H, lambda ds: _b(ds.tables[H]["ReportingPeriodEndDate"] != _period_end(ds)),
       _setter(H, "ReportingPeriodEndDate", "1999-01-31"))
blank("IDS00020", H, "DateTimeDatSetCreate")
custom("IDS00027", H, lambda ds: _b(ds.tables[H]["DateTimeDatSetCreate"] >
                                    pd.Timestamp(dt.datetime.now(dt.UTC).replace(tzinfo=None)) + pd.Timedelta(hours=1)),
       _setter(H, "DateTimeDatSetCreate", "2999-01-01 00:00:00"))

# ---- file rules -----------------------------------------------------------------------------------------


def _structure(ds: Dataset) -> bool:
    return any(name not in ds.tables or [c for c in ds.tables[name].columns if c != "_rid"] != cols
               for name, cols in COLUMNS.items())


def _drop_col(ds: Dataset) -> None:
    ds.tables[MPI] = ds.tables[MPI].drop(columns=["Gender"])


def _empty(table: str) -> Breaker:
    return lambda ds: ds.tables.__setitem__(table, ds.tables[table].iloc[0:0])


custom("IDSREJ001", "FILE", _structure, _drop_col, file_level=True)
custom("IDSREJ002", "FILE", lambda ds: len(ds.tables[H]) == 0, _empty(H), file_level=True)
custom("IDSREJ003", "FILE", lambda ds: len(ds.tables[MPI]) == 0, _empty(MPI), file_level=True)
custom("IDSREJ004", "FILE", lambda ds: len(ds.tables[REF]) == 0, _empty(REF), file_level=True)
custom("IDSREJ005", "FILE", lambda ds: len(ds.tables[GP]) == 0, _empty(GP), file_level=True)
custom("IDSREJ015", "FILE", lambda ds: len(ds.tables[H]) != 1,
       lambda ds: ds.tables.__setitem__(H, pd.concat([ds.tables[H]] * 2, ignore_index=True)), file_level=True)


def _in_period_records(ds: Dataset) -> bool:
    """IDSREJ012: nothing in the file is for the period (no referral open in it, no contact in it)."""
    ref = ds.tables[REF]
    open_ref = (_b(ref["ReferralRequestReceivedDate"] <= _period_end(ds)) &
                ~_b(ref["ServDischDate"] < _period_start(ds)))
    return not open_ref.any()


custom("IDSREJ012", "FILE", _in_period_records,
       lambda ds: ds.tables.__setitem__(REF, ds.tables[REF].assign(
           ReferralRequestReceivedDate=pd.Timestamp("2000-01-01"), ServDischDate=pd.Timestamp("2000-01-02"))),
       file_level=True)

# The reject-file checks that single out records: screened record by record so the rest can go.


def nhs_invalid(s: pd.Series) -> np.ndarray:
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
       _setter(MPI, "NHSNumber", "9990000019"))
fmt("IDSREJ007", MPI, "Postcode", POSTCODE, "LS11AB")
custom("IDSREJ008", MPI, lambda ds: _b(ds.tables[MPI]["PersonBirthDate"] > _period_end(ds)) |
       _b(ds.tables[MPI]["PersonBirthDate"] < EARLIEST_BIRTH), _setter(MPI, "PersonBirthDate", "2999-01-01"))


def _value_codes(ds: Dataset, table: str, col: str) -> tuple[np.ndarray, int]:
    """Codes ``0..n-1`` with equal codes exactly for equal values, null being one value of its own (as in
    ``DataFrame.duplicated``): the id columns' shared codes, a categorical's codes, else a factorisation."""
    s = ds.tables[table][col]
    if (table, col) in KIND:
        codes, n = ds.keys.codes(ds.tables, table, col)
    elif isinstance(s.dtype, pd.CategoricalDtype):
        codes, n = s.cat.codes.to_numpy().astype(np.int64), len(s.cat.categories)
    elif s.dtype.kind in "Mm":
        return _time_codes(s.to_numpy())
    elif arrow_data(s) is not None and pa.types.is_large_string(arrow_data(s).type):
        def enc() -> tuple[np.ndarray, int]:
            (c,), size = encode_together([arrow_data(s)])
            return c, size
        codes, n = ds.keys.derived("codes", (s,), enc, rows=True)
    else:
        codes, uniq = pd.factorize(s.astype(object), use_na_sentinel=True)
        codes, n = codes.astype(np.int64), len(uniq)
    return np.where(codes < 0, n, codes).astype(np.int64, copy=False), n + 1


def _time_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
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


def _compact(key: np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniq = pd.factorize(key)
    return codes.astype(np.int64), len(uniq)


def _group(ds: Dataset, table: str, cols: list[str]) -> tuple[np.ndarray, int]:
    """One integer per row, equal exactly for rows equal in every column of ``cols``."""
    key, n = _value_codes(ds, table, cols[0])
    for c in cols[1:]:
        codes, m = _value_codes(ds, table, c)
        if n * m >= 2 ** 62:
            key, n = _compact(key)
        key, n = key * m + codes, n * m
    return key, n


def _duplicated(key: np.ndarray, n: int) -> np.ndarray:
    """``duplicated(keep=False)`` of a code array."""
    if not len(key):
        return np.zeros(0, dtype=bool)
    if n > 4 * len(key) + 1024:      # a sparse product of codes: count over the distinct ones instead
        key, n = _compact(key)
    return np.bincount(key, minlength=n)[key] > 1


def _dup(table: str, cols: list[str]) -> Check:
    def check(ds: Dataset) -> np.ndarray:
        df = ds.tables[table]
        if not len(df):
            return np.zeros(0, bool)
        present = ~_blank_of(ds, table, cols[0]) if len(cols) == 1 else np.ones(len(df), bool)
        return present & _duplicated(*_group(ds, table, cols))
    return check


def _copy_row1_to_row0(table: str, cols: list[str]) -> Breaker:
    def bad(ds: Dataset) -> None:
        df = ds.tables[table]
        for c in cols:
            df[c] = df[c].astype(object)
            df.loc[0, c] = df.loc[1, c]
            df[c] = df[c].astype("string[pyarrow]")
    return bad


custom("IDSREJ009", MPI, _dup(MPI, ["NHSNumber"]), _copy_row1_to_row0(MPI, ["NHSNumber"]))
custom("IDSREJ010", MPI, _dup(MPI, ["LocalPatientId"]), _copy_row1_to_row0(MPI, ["LocalPatientId"]))

# ---- IDS001 MPI -----------------------------------------------------------------------------------------
blank("IDS00101", MPI, "LocalPatientId")
fmt("IDS00102", MPI, "LocalPatientId", ID20, "X" * 21)
blank("IDS00151", MPI, "OrgIDLocalPatientId")
fmt("IDS00152", MPI, "OrgIDLocalPatientId", ORG, "bad code!")
custom("IDS00153", MPI, lambda ds: ~_blank_of(ds, MPI, "OrgIDLocalPatientId") & _b(
    ds.tables[MPI]["OrgIDLocalPatientId"] != (ds.tables[H]["OrgIDProv"].iloc[0] if len(ds.tables[H]) else "")),
    _setter(MPI, "OrgIDLocalPatientId", "ZZZ99"))
blank("IDS00111", MPI, "NHSNumber")
fmt("IDS00115", MPI, "NHSNumberStatus", r"[0-9]{2}", "1")
one_of("IDS00116", MPI, "NHSNumberStatus", NHS_STATUS, "42")
custom("IDS00117", MPI, lambda ds: ~_blank_of(ds, MPI, "NHSNumber") & _b(ds.tables[MPI]["NHSNumberStatus"] == "07"),
       _setter(MPI, "NHSNumberStatus", "07"))
blank("IDS00162", MPI, "NHSNumberStatus")
custom("IDS00118", MPI, lambda ds: _blank_of(ds, MPI, "NHSNumber") & _blank_of(ds, MPI, "NHSNumberStatus"),
       lambda ds: (_set(ds, MPI, "NHSNumber", None), _set(ds, MPI, "NHSNumberStatus", None)))
custom("IDS00161", MPI, lambda ds: _blank_of(ds, MPI, "NHSNumber") &
       isin(ds.tables[MPI]["NHSNumberStatus"], ["01", "02"]),
       lambda ds: (_set(ds, MPI, "NHSNumber", None), _set(ds, MPI, "NHSNumberStatus", "01")))
blank("IDS00120", MPI, "PersonBirthDate")
blank("IDS00123", MPI, "Postcode")
blank("IDS00129", MPI, "Gender")
fmt("IDS00130", MPI, "Gender", r"[0-9X]", "MM")
one_of("IDS00131", MPI, "Gender", GENDER, "7")
fmt("IDS00132", MPI, "EthnicCategory", r"[A-Z]{1,2}|[0-9]{2}", "a1")
one_of("IDS00133", MPI, "EthnicCategory", ETHNIC, "Q")

# ---- IDS002 GP ------------------------------------------------------------------------------------------
orphan("IDS00220", GP, "LocalPatientId", MPI, "LocalPatientId", "NOPATIENT")
custom("IDS00221", GP, _dup(GP, ["LocalPatientId", "GMPCodeReg", "StartDateGMPRegistration"]),
       lambda ds: ds.tables.__setitem__(GP, pd.concat([ds.tables[GP].iloc[[0]], ds.tables[GP]], ignore_index=True)))
custom("IDS00222", GP, lambda ds: ds.tables[GP]["EndDateGMPRegistration"].isna().to_numpy() &
       _duplicated(*_group(ds, GP, ["LocalPatientId"])) &
       ~_duplicated(*_group(ds, GP, ["LocalPatientId", "GMPCodeReg", "StartDateGMPRegistration"])),
       lambda ds: ds.tables.__setitem__(GP, pd.concat([ds.tables[GP].iloc[[0]].assign(
           GMPCodeReg=pd.Series(["B99999"], dtype="string[pyarrow]")), ds.tables[GP]], ignore_index=True)))
blank("IDS00201", GP, "LocalPatientId")
fmt("IDS00202", GP, "LocalPatientId", ID20, "X" * 21)
blank("IDS00203", GP, "GMPCodeReg")
fmt("IDS00204", GP, "GMPCodeReg", GMP, "12345")
custom("IDS00211", GP, lambda ds: _b(ds.tables[GP]["StartDateGMPRegistration"] >
                                    _period_end(ds) + pd.Timedelta(days=1)),
       _setter(GP, "StartDateGMPRegistration", "2999-01-01"))
custom("IDS00212", GP, _before_parent_date(GP, "StartDateGMPRegistration", "LocalPatientId", MPI, "LocalPatientId",
                                           "PersonBirthDate"),
    _setter(GP, "StartDateGMPRegistration", "1890-01-02"))
custom("IDS00214", GP, lambda ds: _b(ds.tables[GP]["EndDateGMPRegistration"] < _period_start(ds)),
       _setter(GP, "EndDateGMPRegistration", "1990-01-01"))
custom("IDS00215", GP, lambda ds: _b(ds.tables[GP]["EndDateGMPRegistration"] > _period_end(ds)),
       _setter(GP, "EndDateGMPRegistration", "2999-01-01"))
custom("IDS00216", GP, lambda ds: _b(ds.tables[GP]["EndDateGMPRegistration"] <
                                    ds.tables[GP]["StartDateGMPRegistration"]),
       lambda ds: (_set(ds, GP, "StartDateGMPRegistration", ds.period.last.isoformat()),
                   _set(ds, GP, "EndDateGMPRegistration", ds.period.first.isoformat())))

# ---- IDS101 referral ------------------------------------------------------------------------------------
orphan("IDS10101", REF, "LocalPatientId", MPI, "LocalPatientId", "NOPATIENT")
custom("IDS10103", REF, _dup(REF, ["ServiceRequestId"]), _copy_row1_to_row0(REF, ["ServiceRequestId"]))
blank("IDS10104", REF, "ServiceRequestId")
fmt("IDS10105", REF, "ServiceRequestId", ID20, "X" * 21)
blank("IDS10106", REF, "LocalPatientId")
fmt("IDS10107", REF, "LocalPatientId", ID20, "X" * 21)
blank("IDS10108", REF, "OrgIDComm")
fmt("IDS10109", REF, "OrgIDComm", ORG, "bad code!")
blank("IDS10111", REF, "ReferralRequestReceivedDate")
custom("IDS10113", REF, lambda ds: _b(ds.tables[REF]["ReferralRequestReceivedDate"] > _period_end(ds)),
       _setter(REF, "ReferralRequestReceivedDate", "2999-01-01"))
custom("IDS10140", REF, _before_parent_date(REF, "ReferralRequestReceivedDate", "LocalPatientId", MPI, "LocalPatientId",
                                            "PersonBirthDate"),
    _setter(REF, "ReferralRequestReceivedDate", "1890-01-02"))
fmt("IDS10117", REF, "SourceOfReferralIAPT", r"[A-Z0-9]{2}", "B")
fmt("IDS10135", REF, "EndCode", r"[0-9]{2}", "4")
custom("IDS10137", REF, lambda ds: ds.tables[REF]["ServDischDate"].notna().to_numpy() &
       _blank_of(ds, REF, "EndCode"),
       lambda ds: (_set(ds, REF, "ServDischDate", ds.period.last.isoformat()), _set(ds, REF, "EndCode", None)))
custom("IDS10138", REF, lambda ds: ds.tables[REF]["ServDischDate"].isna().to_numpy() &
       ~_blank_of(ds, REF, "EndCode"),
       lambda ds: (_set(ds, REF, "ServDischDate", None), _set(ds, REF, "EndCode", "46")))
custom("IDS10128", REF, lambda ds: _b(ds.tables[REF]["ServDischDate"] < ds.tables[REF]["ReferralRequestReceivedDate"]),
       lambda ds: (_set(ds, REF, "ReferralRequestReceivedDate", ds.period.last.isoformat()),
                   _set(ds, REF, "ServDischDate", ds.period.first.isoformat()), _set(ds, REF, "EndCode", "46")))
custom("IDS10139", REF, lambda ds: _b(ds.tables[REF]["ServDischDate"] > _period_end(ds)),
       lambda ds: (_set(ds, REF, "ServDischDate", "2999-01-01"), _set(ds, REF, "EndCode", "46")))

# ---- IDS201 care contact --------------------------------------------------------------------------------
orphan("IDS20142", CC, "ServiceRequestId", REF, "ServiceRequestId", "NOREFERRAL")
custom("IDS20143", CC, _dup(CC, ["CareContactId"]), _copy_row1_to_row0(CC, ["CareContactId"]))
blank("IDS20101", CC, "CareContactId")
fmt("IDS20102", CC, "CareContactId", ID20, "X" * 21)
blank("IDS20103", CC, "ServiceRequestId")
fmt("IDS20104", CC, "ServiceRequestId", ID20, "X" * 21)
blank("IDS20106", CC, "CareContDate")
custom("IDS20108", CC, lambda ds: _b(ds.tables[CC]["CareContDate"] > _period_end(ds)),
       _setter(CC, "CareContDate", "2999-01-01"))
custom("IDS20170", CC, lambda ds: _b(ds.tables[CC]["CareContDate"] < _period_start(ds)),
       _setter(CC, "CareContDate", "1999-01-01"))
custom("IDS20171", CC, _before_parent_date(CC, "CareContDate", "ServiceRequestId", REF, "ServiceRequestId",
                                           "ReferralRequestReceivedDate"),
    lambda ds: (_set(ds, REF, "ReferralRequestReceivedDate", ds.period.last.isoformat()),
                _set(ds, CC, "ServiceRequestId", ds.tables[REF]["ServiceRequestId"].iloc[0]),
                _set(ds, CC, "CareContDate", ds.period.first.isoformat())))
fmt("IDS20109", CC, "CareContTime", r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]", "25:61")
fmt("IDS20127", CC, "AttendOrDNACode", r"[0-9]", "55")
one_of("IDS20128", CC, "AttendOrDNACode", ATTEND, "8")
custom("IDS20114", CC, lambda ds: _b(ds.tables[CC]["ClinContDurOfCareCont"] < 0) |
       _b(ds.tables[CC]["ClinContDurOfCareCont"] > 9999), _setter(CC, "ClinContDurOfCareCont", -5))
blank("IDS20154", CC, "AppType")
fmt("IDS20155", CC, "AppType", r"[0-9]{2}", "1")
one_of("IDS20156", CC, "AppType", APP_TYPE, "42")
fmt("IDS20119", CC, "ConsMechanism", r"[0-9]{2}", "1")
one_of("IDS20120", CC, "ConsMechanism", CONS_MECH, "42")


def _dup_attended(ds: Dataset) -> np.ndarray:
    df = ds.tables[CC]
    att = isin(df["AttendOrDNACode"], ["5", "6"])
    dup = _duplicated(*_group(ds, CC, ["ServiceRequestId", "CareContDate", "CareContTime", "AttendOrDNACode"]))
    return att & dup


def _make_dup_attended(ds: Dataset) -> None:
    df = ds.tables[CC]
    row = df.iloc[[0]].assign(CareContactId=pd.Series(["DUPCONTACT"], dtype="string[pyarrow]"),
                              AttendOrDNACode=pd.Series(["5"], dtype="string[pyarrow]"))
    _set(ds, CC, "AttendOrDNACode", "5")
    ds.tables[CC] = pd.concat([ds.tables[CC], row], ignore_index=True)


custom("IDS20168", CC, _dup_attended, _make_dup_attended)
custom("IDS20169", CC, lambda ds: isin(ds.tables[CC]["AttendOrDNACode"], ["5", "6"]) &
       ~_has_parent(ds, CC, "CareContactId", ACT, "CareContactId"),
       lambda ds: (_set(ds, CC, "AttendOrDNACode", "5"),
                   ds.tables.__setitem__(ACT, ds.tables[ACT][ds.tables[ACT]["CareContactId"] !=
                                                              ds.tables[CC]["CareContactId"].iloc[0]]
                                         .reset_index(drop=True))))

# ---- IDS202 care activity -------------------------------------------------------------------------------
orphan("IDS20224", ACT, "CareContactId", CC, "CareContactId", "NOCONTACT")
custom("IDS20225", ACT, _dup(ACT, ["CareActId"]), _copy_row1_to_row0(ACT, ["CareActId"]))
blank("IDS20201", ACT, "CareActId")
fmt("IDS20202", ACT, "CareActId", ID20, "X" * 21)
blank("IDS20203", ACT, "CareContactId")
fmt("IDS20204", ACT, "CareContactId", ID20, "X" * 21)
fmt("IDS20205", ACT, "CareProfLocalId", ID20, "X" * 21)
custom("IDS20206", ACT, lambda ds: _b(ds.tables[ACT]["ClinContactDurOfCareAct"] < 0) |
       _b(ds.tables[ACT]["ClinContactDurOfCareAct"] > 9999), _setter(ACT, "ClinContactDurOfCareAct", -5))

# ---- IDS603 presenting complaints -----------------------------------------------------------------------
orphan("IDS60301", PRES, "ServiceRequestId", REF, "ServiceRequestId", "NOREFERRAL")
custom("IDS60302", PRES, _dup(PRES, ["ServiceRequestId", "PresCompDate", "PresComp"]),
       lambda ds: ds.tables.__setitem__(PRES, pd.concat([ds.tables[PRES].iloc[[0]], ds.tables[PRES]],
                                                        ignore_index=True)))
blank("IDS60303", PRES, "ServiceRequestId")
fmt("IDS60304", PRES, "ServiceRequestId", ID20, "X" * 21)
blank("IDS60305", PRES, "FindSchemeInUse")
fmt("IDS60306", PRES, "FindSchemeInUse", r"[0-9]{2}", "1")
one_of("IDS60307", PRES, "FindSchemeInUse", FIND_SCHEME, "42")
blank("IDS60308", PRES, "PresComp")
fmt("IDS60309", PRES, "PresComp", r"[ -~]{1,20}", "X" * 30)
custom("IDS60310", PRES, lambda ds: _b(ds.tables[PRES]["FindSchemeInUse"] == "01") &
       ~_blank_of(ds, PRES, "PresComp") & ~_b(ds.tables[PRES]["PresComp"].str.fullmatch(ICD10)),
       _setter(PRES, "PresComp", "depression"))
custom("IDS60314", PRES, lambda ds: _b(ds.tables[PRES]["PresCompDate"] > _period_end(ds)),
       _setter(PRES, "PresCompDate", "2999-01-01"))
def _presented_before_birth(ds: Dataset) -> np.ndarray:
    """IDS60316: PresCompDate before the birth date of the patient of the complaint's referral (two hops)."""
    ref_row = _parent_row(ds, PRES, "ServiceRequestId", REF, "ServiceRequestId")
    ref_pid, _ = ds.keys.codes(ds.tables, REF, "LocalPatientId")
    pid = _take(ref_pid, ref_row, -1)
    birth = _take(ds.tables[MPI]["PersonBirthDate"].to_numpy(),
                  _parent_row(ds, PRES, "", MPI, "LocalPatientId", codes=pid), np.datetime64("NaT"))
    return np.asarray(ds.tables[PRES]["PresCompDate"].to_numpy() < birth, dtype=bool)


custom("IDS60316", PRES, _presented_before_birth, _setter(PRES, "PresCompDate", "1890-01-02"))

# ---- IDS606 / IDS607 coded scored assessments -----------------------------------------------------------


def _per_value(s: pd.Series, fn) -> np.ndarray:
    """``fn`` over the distinct values of a categorical (then taken by code), or over the whole column."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        vals = fn(pd.Series(s.cat.categories)) if len(s.cat.categories) else np.zeros(0)
        return by_code(np.asarray(vals, dtype=float), s.cat.codes.to_numpy(), np.nan)
    return fn(s)


def _score_bad(table: str) -> Check:
    """Populated, a whole number, but outside the tool's range (PHQ-9 0-27, GAD-7 0-21, WSAS 0-8)."""
    def numeric(v: pd.Series) -> np.ndarray:
        return pd.to_numeric(v.astype(object), errors="coerce").to_numpy(dtype=float)

    def bounds(v: pd.Series, i: int) -> np.ndarray:
        return v.astype(object).map({k: r[i] for k, r in SCORE_RANGES.items()}).to_numpy(dtype=float)

    def check(ds: Dataset) -> np.ndarray:
        df = ds.tables[table]
        sc, tc = df["PersScore"], df["CodedAssToolType"]
        if isinstance(sc.dtype, pd.CategoricalDtype) and isinstance(tc.dtype, pd.CategoricalDtype):
            # decided once per (tool, score) pair of categories, then one gather over the rows
            score = numeric(pd.Series(sc.cat.categories))
            tools = pd.Series(tc.cat.categories)
            lo, hi = bounds(tools, 0)[:, None], bounds(tools, 1)[:, None]
            table_ = np.zeros((len(lo) + 1, len(score) + 1), dtype=bool)   # last row/column: null (code -1)
            with np.errstate(invalid="ignore"):
                table_[:-1, :-1] = ~np.isnan(score) & ~np.isnan(lo) & ((score < lo) | (score > hi))
            return table_[tc.cat.codes.to_numpy(), sc.cat.codes.to_numpy()]
        score = _per_value(sc, numeric)
        lo, hi = _per_value(tc, lambda v: bounds(v, 0)), _per_value(tc, lambda v: bounds(v, 1))
        with np.errstate(invalid="ignore"):
            return ~np.isnan(score) & ~np.isnan(lo) & ((score < lo) | (score > hi))
    return check


for _t, (c_dup, c_blank_tool, c_fmt_tool, c_ref_tool, c_blank_score, c_fmt_score, c_range) in {
    A606: ("IDS60616", "IDS60603", "IDS60604", "IDS60613", "IDS60605", "IDS60606", "IDS60615"),
    A607: ("IDS60709", "IDS60703", "IDS60704", "IDS60710", "IDS60705", "IDS60706", "IDS60711"),
}.items():
    key = (["ServiceRequestId", "AssToolCompDate", "AssToolCompTime", "CodedAssToolType"] if _t == A606
           else ["CareActId", "CodedAssToolType"])
    custom(c_dup, _t, _dup(_t, key), (lambda t: lambda ds: ds.tables.__setitem__(
        t, pd.concat([ds.tables[t].iloc[[0]], ds.tables[t]], ignore_index=True)))(_t))
    blank(c_blank_tool, _t, "CodedAssToolType")
    fmt(c_fmt_tool, _t, "CodedAssToolType", SNOMED_RE, "PHQ9")
    one_of(c_ref_tool, _t, "CodedAssToolType", TOOLS, "123456789")
    blank(c_blank_score, _t, "PersScore")
    fmt(c_fmt_score, _t, "PersScore", r"[0-9]{1,3}", "1.5")
    custom(c_range, _t, _score_bad(_t), _setter(_t, "PersScore", "31"))

orphan("IDS60612", A606, "ServiceRequestId", REF, "ServiceRequestId", "NOREFERRAL")
blank("IDS60601", A606, "ServiceRequestId")
fmt("IDS60602", A606, "ServiceRequestId", ID20, "X" * 21)
blank("IDS60608", A606, "AssToolCompDate")
custom("IDS60610", A606, lambda ds: _b(ds.tables[A606]["AssToolCompDate"] > _period_end(ds)),
       _setter(A606, "AssToolCompDate", "2999-01-01"))
custom("IDS60618", A606, lambda ds: _b(ds.tables[A606]["AssToolCompDate"] < _period_start(ds)),
       _setter(A606, "AssToolCompDate", "1999-01-01"))
custom("IDS60617", A606, _before_parent_date(A606, "AssToolCompDate", "ServiceRequestId", REF, "ServiceRequestId",
                                             "ReferralRequestReceivedDate"),
    lambda ds: (_set(ds, REF, "ReferralRequestReceivedDate", ds.period.last.isoformat()),
                _set(ds, A606, "ServiceRequestId", ds.tables[REF]["ServiceRequestId"].iloc[0]),
                _set(ds, A606, "AssToolCompDate", ds.period.first.isoformat())))
fmt("IDS60614", A606, "AssToolCompTime", r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]", "7pm")
orphan("IDS60708", A607, "CareActId", ACT, "CareActId", "NOACTIVITY")
blank("IDS60701", A607, "CareActId")
fmt("IDS60702", A607, "CareActId", ID20, "X" * 21)


# ---- applying the rules ---------------------------------------------------------------------------------

#: Table → the reject-group code for a record whose parent was removed (see builder.cascade).
ORPHAN_CODE = {GP: "IDS00220", REF: "IDS10101", MPI: "IDS00146", CC: "IDS20142", PRES: "IDS60301",
               A606: "IDS60612", ACT: "IDS20224", A607: "IDS60708"}
#: Reject-file rules that single out records: screened out (quarantined) before writing.
FILE_RECORD_CODES = ("IDSREJ006", "IDSREJ007", "IDSREJ008", "IDSREJ009", "IDSREJ010")


@dataclass
class ScreenResult:
    """What screening did: counts per rule, quarantined items, and any file-level failure left."""

    failures: dict[str, int] = field(default_factory=dict)     # code -> failing records (all severities)
    quarantined: list[Quarantined] = field(default_factory=list)
    file_failures: list[str] = field(default_factory=list)     # reject-file codes still failing after screening
    removed: dict[str, int] = field(default_factory=dict)      # table -> records removed
    seconds: dict[str, float] = field(default_factory=dict)    # code -> time to evaluate (benchmarks)

    @property
    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for q in self.quarantined:
            out[q.reason_code] = out.get(q.reason_code, 0) + 1
        return dict(sorted(out.items()))


def evaluate(ds: Dataset, codes: list[str] | None = None) -> dict[str, np.ndarray | bool]:
    """Run rules (all by default) without changing anything: code -> mask (record rules) or bool (file)."""
    return {code: REGISTRY[code].check(ds) for code in (codes or implemented())}


def _items(table: str, rids: pd.Series, code: str) -> list[Quarantined]:
    msg = CATALOGUE[code][2]
    return [Quarantined(table, str(r), code, msg) for r in rids.tolist()]


def screen(ds: Dataset, only: set[str] | None = None) -> ScreenResult:
    """Validate ``ds`` and remove, in place, every record that would be rejected; see the module doc.

    ``only`` restricts the record rules evaluated (benchmarks compare like with like); the cascade and the
    file-level rules always run.
    """
    res = ScreenResult()
    before = ds.counts()
    # orphan (reject-group "no valid parent") rules are decided by the cascade below, after the drops:
    # a record orphaned from the start is still orphaned then, so evaluating them twice is wasted work
    orphan_codes = set(ORPHAN_CODE.values())
    record_rules = [r for r in REGISTRY.values() if not r.file_level and r.code not in orphan_codes
                    and (only is None or r.code in only)]
    masks: dict[str, np.ndarray] = {}
    for r in record_rules:
        t0 = time.perf_counter()
        masks[r.code] = np.asarray(r.check(ds), dtype=bool)
        res.seconds[r.code] = time.perf_counter() - t0
    for code, m in masks.items():
        if m.any():
            res.failures[code] = int(m.sum())
    drop_by_table: dict[str, np.ndarray] = {}
    for r in record_rules:
        if r.severity == WARNING or not masks[r.code].any():
            continue
        m = masks[r.code]
        res.quarantined += _items(r.table, ds.tables[r.table]["_rid"][m], r.code)
        drop_by_table[r.table] = drop_by_table.get(r.table, np.zeros(len(m), bool)) | m
    for table, rids in cascade(ds, drop_by_table).items():  # the rejects and their dependants, one filter each
        res.quarantined += _items(table, rids, ORPHAN_CODE[table])
        res.failures[ORPHAN_CODE[table]] = res.failures.get(ORPHAN_CODE[table], 0) + len(rids)
    for r in REGISTRY.values():
        if r.file_level and r.check(ds):
            res.file_failures.append(r.code)
            res.failures[r.code] = 1
    if before.get(MPI) and not len(ds.tables[MPI]):
        res.file_failures.append("IDSREJ101")
        res.failures["IDSREJ101"] = 1
    for code in FILE_RECORD_CODES:  # must hold after screening, or the file would be rejected
        if np.asarray(REGISTRY[code].check(ds)).any():  # pragma: no cover - screening removed them
            res.file_failures.append(code)
    after = ds.counts()
    res.removed = {t: before[t] - after.get(t, 0) for t in before if before[t] != after.get(t, 0)}
    ds.keys.clear()   # the writer needs none of it; on a national month the cache holds ~100 MB
    return res


def failure_counts_by_severity(failures: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for code, n in failures.items():
        sev = CATALOGUE.get(code, ("?",))[0]
        out[sev] = out.get(sev, 0) + n
    return out
