"""The national layout of the data set: every table and field NHS England takes, named, ordered and typed as its
intermediate database (IDB) and receiving pipeline define them, and the files written in that layout.

The named submitter loads the month into NHS England's IDB (an Access template) and uploads that through the
SDCS Cloud portal. NHS England's receiving side reads the tables by these exact names: a missing or misnamed field
is a structure failure (IDSREJ001) that rejects the whole file. So the layout is read from NHS England's own
definitions, copied beside this module, never typed in by hand:

* ``iapt_v2_1_fields.tsv`` — v2.1: 21 tables, 140 fields (``iapt_v2_1/submission_constants.py``);
* ``iapt_v2_0_fields.tsv`` — v2.0: 19 tables (no IDS003, IDS601), 130 fields (``submission_constants.py``).

The builder's frames always carry v2.1's national names (the validation rules are keyed on them). A v2.0 field is
matched to the builder's column by its NHS Data Dictionary uid, which v2.1 kept when it renamed fields
(``SourceOfReferralMH`` → ``SourceOfReferralIAPT`` is I101030, ``ConsMediumUsed`` → ``ConsMechanism`` I201070):

* a v2.1-only field (GenderIdentity, GenderIdentitySameAtBirth, EthnicCategory2021, EmpSupportDischargeDate) or
  table (IDS003AccommStatus, IDS601MedHistPrevDiag) is left out of v2.0 output;
* a v2.0-only field (OrgIDResidenceResp, OrgIDGPPrac, JSAInd, OtherBenefitInd) is written empty: the service
  does not record it, and the field must be there for the file's structure.

Types (:data:`ARROW_TYPES`): ``str`` → text (codes keep their leading zeros), ``date`` → date, ``int`` → 64-bit
integer, ``datetime`` → a timestamp for DATE AND TIME DATA SET CREATED and a time of day for the ``... TIME``
fields (CARE CONTACT TIME, ONWARD REFERRAL TIME, ...: NHS England's Spark definitions type a time of day as a
datetime; the data dictionary's element is a time).

Files: :func:`arrow_table` gives a table in the national layout with national types (the archive's Parquet
files); :func:`csv_bytes` the same table as the CSV the IDB imports: UTF-8 (no byte-order mark), comma-separated,
a header row, CRLF line ends, quotes only where a value needs them; dates ``YYYY-MM-DD``, date-times
``YYYY-MM-DD HH:MM:SS``, times ``HH:MM:SS``; blanks for nulls. A builder column the national list does not know
fails loudly (:class:`IdbLayoutError`) instead of being dropped.

These files hold patient data. They are never written to disk in clear: they go into the encrypted archive
(:mod:`caldicott.dataset.writer`), and ``python -m caldicott.dataset.writer idb ARCHIVE OUTDIR`` decrypts them for
the submitter (0600 files in a 0700 folder).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

#: the national field lists, per data set version
FIELDS_FILES = {"2.1": Path(__file__).with_name("iapt_v2_1_fields.tsv"),
                "2.0": Path(__file__).with_name("iapt_v2_0_fields.tsv")}
FIELDS_FILE = FIELDS_FILES["2.1"]
#: the version whose names the builder's frames carry
BUILDER_VERSION = "2.1"
#: folder of the CSVs inside the archive
FOLDER = "idb"
#: import order: parents before the tables that refer to them (header, patient, referral, contact, activity)
ORDER_PREFIXES = ("IDS000", "IDS00", "IDS01", "IDS1", "IDS20", "IDS6", "IDS8", "IDS9")
#: national type -> Arrow type of the written column (``time`` is a national ``datetime`` holding a time of day).
#: Milliseconds: Parquet has no seconds unit for times and timestamps, so these round-trip exactly; the values are
#: whole seconds, and the CSV writes them as such.
ARROW_TYPES: dict[str, pa.DataType] = {"str": pa.string(), "date": pa.date32(), "datetime": pa.timestamp("ms"),
                                       "time": pa.time32("ms"), "int": pa.int64()}


class IdbLayoutError(ValueError):
    """A built table or column has no place in the national IDB layout."""


@dataclass(frozen=True)
class Field:
    """One national field: its name in the version, national type, Arrow type and the builder column it is
    written from (None: the builder has no such column, so it is written empty)."""

    name: str
    national_type: str
    uid: str
    source: str | None

    @property
    def kind(self) -> str:
        return self.national_type

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.national_type]


def _rows(version: str) -> list[dict[str, str]]:
    if version not in FIELDS_FILES:
        raise IdbLayoutError(f"no national field list for data set version {version!r}")
    lines = [ln for ln in FIELDS_FILES[version].read_text(encoding="utf-8").splitlines()
             if ln and not ln.startswith("#")]
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"), strict=False)) for ln in lines[1:]]


def _kind(row: dict[str, str]) -> str:
    """The national type, a time of day told apart from a date-time by its data dictionary name."""
    if row["type"] == "datetime" and "DATE" not in row["data_dictionary_name"]:
        return "time"
    return row["type"]


@cache
def national_fields(version: str = BUILDER_VERSION) -> dict[str, list[tuple[str, str]]]:
    """``{table: [(field, national type), ...]}`` in national order, exactly as the bundled list has them."""
    out: dict[str, list[tuple[str, str]]] = {}
    for r in _rows(version):
        out.setdefault(r["table"], []).append((r["field"], r["type"]))
    return out


@cache
def layout(version: str = BUILDER_VERSION) -> dict[str, tuple[Field, ...]]:
    """``{table: (Field, ...)}`` of ``version``, each field tied to the builder's (v2.1) column by its uid."""
    builder = {(r["table"], r["uid"]): r["field"] for r in _rows(BUILDER_VERSION)}
    out: dict[str, list[Field]] = {}
    for r in _rows(version):
        out.setdefault(r["table"], []).append(
            Field(r["field"], _kind(r), r["uid"], builder.get((r["table"], r["uid"]))))
    return {t: tuple(fs) for t, fs in out.items()}


def tables(version: str = BUILDER_VERSION) -> list[str]:
    """The tables of ``version``, in import order."""
    return import_order(list(layout(version)))


def import_order(names: list[str]) -> list[str]:
    """``names`` in an order the IDB accepts (a table after those it refers to)."""
    def rank(name: str) -> tuple[int, str]:
        return next((i for i, p in enumerate(ORDER_PREFIXES) if name.startswith(p)), len(ORDER_PREFIXES)), name
    return sorted(names, key=rank)


def check_columns(name: str, columns: list[str]) -> None:
    """Raise :class:`IdbLayoutError` for a table or column (other than the hidden ``_rid``) the national v2.1 list
    does not have: the builder's names are the national ones, so anything else is a mistake to catch, not drop."""
    fields = national_fields(BUILDER_VERSION)
    if name not in fields:
        raise IdbLayoutError(f"{name} is not a table of the national IDB layout (iapt_v2_1_fields.tsv)")
    known = {f for f, _ in fields[name]}
    unknown = sorted(c for c in columns if c != "_rid" and c not in known)
    if unknown:
        raise IdbLayoutError(f"{name}: column(s) {', '.join(unknown)} are not national IDB fields; name them as "
                             "iapt_v2_1_fields.tsv does")


def _text(values: pd.Series) -> pa.Array:
    """A text column as Arrow ``string`` (categoricals decoded, booleans as Y/N, whole numbers without a point)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        arr = pa.array(values)
        return pc.cast(arr.dictionary_decode() if isinstance(arr, pa.DictionaryArray) else arr, pa.string())
    if pd.api.types.is_bool_dtype(values.dtype):
        return pa.array(values.map({True: "Y", False: "N"}).astype(object), type=pa.string())
    if pd.api.types.is_integer_dtype(values.dtype):
        return pa.array(values.astype("Int64").astype("string[pyarrow]"), type=pa.string())
    if pd.api.types.is_float_dtype(values.dtype):
        whole = values.dropna()
        if (whole.round() == whole).all():
            return pa.array(values.astype("Int64").astype("string[pyarrow]"), type=pa.string())
        return pa.array(values.astype("string[pyarrow]"), type=pa.string())
    if values.dtype.kind == "M":
        return pc.cast(pa.array(values.astype("datetime64[s]"), type=pa.timestamp("s")), pa.string())
    arr = pa.array(values.astype("string[pyarrow]"))
    return pc.cast(arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr, pa.string())


def _time(values: pd.Series) -> pa.Array:
    """``HH:MM:SS`` text (as built: a categorical) as Arrow ``time32[ms]``; anything not a time of day is null.

    Parsed once per distinct value (at most 86,400), then one gather: Arrow cannot cast text to a time."""
    if values.dtype.kind == "M":
        secs = values.astype("datetime64[s]").to_numpy()
        tod = np.where(np.isnat(secs), 0, secs.astype(np.int64) % 86_400 * 1000).astype(np.int32)
        return pa.array(tod, type=pa.time32("ms"), mask=np.isnat(secs))
    arr = _text(values)
    enc = pc.dictionary_encode(arr)
    cats = enc.dictionary.to_pylist()
    seconds = np.full(len(cats) + 1, -1, dtype=np.int64)          # last slot: null
    for i, c in enumerate(cats):
        parts = c.strip().split(":") if c else []
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            h, m, s = (int(p) for p in parts)
            if h < 24 and m < 60 and s < 60:
                seconds[i] = h * 3600 + m * 60 + s
    idx = enc.indices.fill_null(len(cats)).to_numpy(zero_copy_only=False)
    out = seconds[idx]
    return pa.array((np.maximum(out, 0) * 1000).astype(np.int32), type=pa.time32("ms"), mask=out < 0)


def _typed(values: pd.Series, field: Field) -> pa.Array:
    """One builder column as the Arrow array of its national type."""
    values = values.reset_index(drop=True)
    kind = field.kind
    if kind == "str":
        return _text(values)
    if kind in ("date", "datetime"):
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind not in "M":
            values = pd.to_datetime(values.astype(object), errors="coerce", format="ISO8601")
        ts = pa.array(values.astype("datetime64[s]"), type=pa.timestamp("s"))
        return pc.cast(ts, pa.date32()) if kind == "date" else pc.cast(ts, pa.timestamp("ms"))
    if kind == "time":
        return _time(values)
    if kind == "int":
        nums = pd.to_numeric(values.astype(object) if isinstance(values.dtype, pd.CategoricalDtype) else values,
                             errors="coerce").astype("Int64")
        return pa.array(nums, type=pa.int64())
    raise IdbLayoutError(f"{field.name}: national type {kind!r} is not known")  # pragma: no cover - list checked


def arrow_table(df: pd.DataFrame, name: str, version: str = BUILDER_VERSION) -> pa.Table:
    """``df`` (a builder frame, v2.1 names) laid out as the national table ``name`` of ``version``: every field, in
    national order, with its national type; a field the builder has no column for is a column of nulls."""
    check_columns(name, list(df.columns))
    fields = layout(version).get(name)
    if fields is None:
        raise IdbLayoutError(f"{name} is not a table of data set version {version}")
    n = len(df)
    arrays = [_typed(df[f.source], f) if f.source is not None and f.source in df.columns
              else pa.nulls(n, type=f.arrow_type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(f.name, f.arrow_type) for f in fields]))


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """One typed column as the IDB's text: times and date-times to the second (they hold whole seconds)."""
    if pa.types.is_time(col.type):
        col = pc.cast(col, pa.time32("s"))
    elif pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("s"))
    return pc.cast(col, pa.string())


def text_table(typed: pa.Table) -> pa.Table:
    """A national table as text (what the IDB imports): ISO dates, ``HH:MM:SS`` times, ``YYYY-MM-DD HH:MM:SS``
    date-times, digits; nulls stay null."""
    return pa.Table.from_arrays([_as_string(c) for c in typed.columns], names=typed.column_names)


def csv_from_arrow(typed: pa.Table) -> bytes:
    """The IDB CSV of a table already laid out by :func:`arrow_table` (UTF-8, header row, CRLF)."""
    buf = io.BytesIO()
    pacsv.write_csv(text_table(typed), buf,
                    write_options=pacsv.WriteOptions(include_header=True, eol="\r\n", quoting_header="none",
                                                     quoting_style="needed"))
    return buf.getvalue()


def csv_bytes(df: pd.DataFrame, name: str, version: str = BUILDER_VERSION) -> bytes:
    """The CSV the IDB imports for one table of ``version``."""
    return csv_from_arrow(arrow_table(df, name, version))


def members(frames: dict[str, pd.DataFrame], version: str = BUILDER_VERSION) -> dict[str, bytes]:
    """``{"idb/<TABLE>.csv": bytes}`` for every table of ``version`` (in import order); a table the version has
    that ``frames`` lacks is refused (the file would fail the structure check)."""
    missing = [t for t in tables(version) if t not in frames]
    if missing:
        raise IdbLayoutError(f"data set {version} needs table(s) {', '.join(missing)}")
    return {f"{FOLDER}/{name}.csv": csv_bytes(frames[name], name, version) for name in tables(version)}


def to_builder_names(frames: dict[str, pd.DataFrame], version: str) -> dict[str, pd.DataFrame]:
    """Frames read back from an archive of ``version`` with the builder's (v2.1) column names, for code that reads a
    written submission (the planning extract): renamed fields by uid; fields v2.1 does not have are left as they
    are."""
    if version == BUILDER_VERSION:
        return frames
    out = dict(frames)
    for name, fields in layout(version).items():
        if name in out:
            out[name] = out[name].rename(columns={f.name: f.source for f in fields
                                                  if f.source is not None and f.source != f.name})
    return out


__all__ = ["ARROW_TYPES", "BUILDER_VERSION", "FIELDS_FILE", "FIELDS_FILES", "FOLDER", "Field", "IdbLayoutError",
           "arrow_table", "check_columns", "csv_bytes", "csv_from_arrow", "import_order", "layout", "members",
           "national_fields", "tables", "text_table", "to_builder_names"]
