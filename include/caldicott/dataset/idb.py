"""What the national intermediate database (IDB) imports: one CSV per IDS table, in NHS England's columns.

The named submitter loads the month into NHS England's IDB (an Access template) and uploads that through the
SDCS Cloud portal. The IDB imports delimited text table by table, so the archive carries, besides the Parquet
files, ``idb/<TABLE>.csv`` for every table the builder produces:

* columns: every national field of the table, named and ordered as in ``iapt_v2_1_fields.tsv`` (NHS England's
  v2.1 definitions, copied beside this module); a field the builder does not produce yet is an empty column, so
  the file always matches the IDB's table;
* UTF-8 (no byte-order mark), comma-separated, a header row, CRLF line ends, quotes only where a value needs them;
* dates ``YYYY-MM-DD``; date-times ``YYYY-MM-DD HH:MM:SS``; times ``HH:MM:SS`` as built; blanks for nulls.

Adding a table (issue 12) is adding it to the builder: any table in :data:`caldicott.dataset.builder.COLUMNS`
that the national list knows is written here without a change; a builder column the national list does not know
fails loudly (:class:`IdbLayoutError`) instead of being dropped. :data:`RENAMES` maps the builder's few older
names onto the national ones.

These files hold patient data. They are never written to disk in clear: they go into the encrypted archive
(:mod:`caldicott.dataset.writer`), and ``python -m caldicott.dataset.writer idb ARCHIVE OUTDIR`` decrypts them for
the submitter (0600 files in a 0700 folder).
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

FIELDS_FILE = Path(__file__).with_name("iapt_v2_1_fields.tsv")
#: folder of the CSVs inside the archive
FOLDER = "idb"
#: builder column -> national field, where the builder's name is an older one
RENAMES: dict[str, dict[str, str]] = {
    "IDS202CareActivity": {"CareProfLocalId": "CarePersLocalId"},
}
#: import order: parents before the tables that refer to them (header, patient, referral, contact, activity)
ORDER_PREFIXES = ("IDS000", "IDS00", "IDS01", "IDS1", "IDS20", "IDS6", "IDS8", "IDS9")


class IdbLayoutError(ValueError):
    """A built table or column has no place in the national IDB layout."""


@cache
def national_fields() -> dict[str, list[tuple[str, str]]]:
    """``{table: [(field, type), ...]}`` in national order, from the bundled field list."""
    out: dict[str, list[tuple[str, str]]] = {}
    lines = [ln for ln in FIELDS_FILE.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    for line in lines[1:]:
        table, field, typ, *_ = line.split("\t")
        out.setdefault(table, []).append((field, typ))
    return out


def import_order(tables: list[str]) -> list[str]:
    """``tables`` in an order the IDB accepts (a table after those it refers to)."""
    def rank(name: str) -> tuple[int, str]:
        return next((i for i, p in enumerate(ORDER_PREFIXES) if name.startswith(p)), len(ORDER_PREFIXES)), name
    return sorted(tables, key=rank)


def _national(table: str, columns: list[str]) -> dict[str, str]:
    """builder column -> national field for ``table``; raises :class:`IdbLayoutError` on anything unknown."""
    fields = national_fields()
    if table not in fields:
        raise IdbLayoutError(f"{table} is not a table of the national IDB layout (iapt_v2_1_fields.tsv)")
    known = {f for f, _ in fields[table]}
    renames = RENAMES.get(table, {})
    mapping = {c: renames.get(c, c) for c in columns}
    unknown = sorted(c for c, n in mapping.items() if n not in known)
    if unknown:
        raise IdbLayoutError(f"{table}: column(s) {', '.join(unknown)} are not national IDB fields; name them as "
                             "iapt_v2_1_fields.tsv does (or map them in caldicott.dataset.idb.RENAMES)")
    return mapping


def _as_text(values: pd.Series, typ: str) -> pa.Array:
    """One column as the text the IDB imports (ISO dates, whole numbers without a decimal point)."""
    if values.dtype.kind == "M":
        ts = pa.array(values.astype("datetime64[s]"), type=pa.timestamp("s"))
        return pc.strftime(ts, format="%Y-%m-%d" if typ == "date" else "%Y-%m-%d %H:%M:%S")
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(values.cat.categories.dtype)
    if pd.api.types.is_bool_dtype(values.dtype):
        return pa.array(values.map({True: "Y", False: "N"}).astype(object), type=pa.string())
    if pd.api.types.is_integer_dtype(values.dtype):
        return pa.array(values.astype("Int64").astype("string[pyarrow]"), type=pa.string())
    if pd.api.types.is_float_dtype(values.dtype):
        whole = values.dropna()
        if (whole.round() == whole).all():
            return pa.array(values.astype("Int64").astype("string[pyarrow]"), type=pa.string())
        return pa.array(values.astype("string[pyarrow]"), type=pa.string())
    return pa.array(values.astype("string[pyarrow]"), type=pa.string())


def table(df: pd.DataFrame, name: str, columns: list[str]) -> pa.Table:
    """``df``'s ``columns`` laid out as the national table ``name``: every field, national order, text."""
    mapping = _national(name, columns)
    present = {mapping[c]: c for c in columns}
    n = len(df)
    arrays, names = [], []
    for field, typ in national_fields()[name]:
        if field in present:
            arrays.append(_as_text(df[present[field]].reset_index(drop=True), typ))
        else:
            arrays.append(pa.nulls(n, type=pa.string()))
        names.append(field)
    return pa.Table.from_arrays(arrays, names=names)


def csv_bytes(df: pd.DataFrame, name: str, columns: list[str]) -> bytes:
    """The CSV the IDB imports for one table (UTF-8, header row, CRLF)."""
    buf = io.BytesIO()
    pacsv.write_csv(table(df, name, columns), buf,
                    write_options=pacsv.WriteOptions(include_header=True, eol="\r\n", quoting_header="none",
                                                     quoting_style="needed"))
    return buf.getvalue()


def members(tables: dict[str, pd.DataFrame], columns: dict[str, list[str]]) -> dict[str, bytes]:
    """``{"idb/<TABLE>.csv": bytes}`` for every built table, in import order."""
    return {f"{FOLDER}/{name}.csv": csv_bytes(tables[name], name, columns[name])
            for name in import_order([t for t in columns if t in tables])}


__all__ = ["FOLDER", "RENAMES", "IdbLayoutError", "csv_bytes", "import_order", "members", "national_fields",
           "table"]
