"""Bulk reads from a PostgreSQL records source: ``COPY (query) TO STDOUT`` as CSV, parsed by pyarrow.

Why: at national scale (millions of rows a month) a row-by-row DB-API fetch spends most of its time making one
Python object per cell; ``COPY`` lets the server write the rows as CSV (on its own core) and pyarrow's C++ parser
turns them straight into columns: a month's contacts 2.8x faster, the whole month's read 1.7x (docs/monthly_dataset.md).

The frame must be the one the plain read gives (``pd.DataFrame(cursor rows)``), so the builder cannot tell which
path ran (tests/unit/dataset/test_read_source_equivalence.py): text columns are pandas' ``str`` with NaN for a null,
an all-null column is ``object`` holding None, whole numbers are ``int64`` (``float64`` when one is null), flags
``bool`` (``object`` holding True, False and None when one is null), dates ``object`` holding ``datetime.date``
and None. A query selecting a column of any other type is not read here (:func:`read_frame` returns None and the
caller reads it plainly).

CSV keeps a null and an empty text apart (an unquoted empty field is a null, ``""`` an empty text), and quotes
separators, quotes and line breaks inside values, so any stored text comes back as it was.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import Boolean, Date, Engine, Integer, String

from caldicott.records.queries import AnySelect

#: The column types read here, as the arrow type the CSV text is parsed to (DateTime is not: the plain read's
#: values carry the session's time zone rules; the data set reads instants as text anyway).
_ARROW: tuple[tuple[type[Any], pa.DataType], ...] = (
    (String, pa.string()), (Integer, pa.int64()), (Boolean, pa.bool_()), (Date, pa.date32()))


class BulkReadError(RuntimeError):
    """A bulk read that could not be parsed; names the table, never a value."""


def _arrow_type(column_type: Any) -> pa.DataType | None:
    for kind, arrow in _ARROW:
        if isinstance(column_type, kind):
            return arrow
    return None


def read_frame(engine: Engine, query: AnySelect) -> pd.DataFrame | None:
    """``query``'s rows as the plain read's frame, through ``COPY``; None if a selected column's type is not one
    this reads (text, whole numbers, flags, dates), so the caller reads it row by row instead."""
    columns = list(query.selected_columns)
    types = [_arrow_type(col.type) for col in columns]
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg2" or any(t is None for t in types):
        return None                                     # COPY through psycopg2's copy_expert; other drivers: plainly
    keys = [str(col.key) for col in columns]
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    buffer = io.BytesIO()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        # literal_binds renders the bound values as SQL literals (escaped by the dialect): COPY takes no parameters
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')", buffer)
        cursor.close()
        raw.rollback()                                        # read only: end the transaction COPY ran in
    finally:
        raw.close()
    if buffer.tell() == 0:
        return pd.DataFrame([], columns=keys)               # as the plain read's frame of no rows
    buffer.seek(0)
    try:
        table = pa_csv.read_csv(
            buffer,
            read_options=pa_csv.ReadOptions(column_names=keys),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict(zip(keys, types, strict=True)),
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
                true_values=["t"], false_values=["f"]))            # PostgreSQL's text of a boolean
    except pa.ArrowInvalid:
        # the parser's message quotes the offending row, which is patient data: it must not reach a log
        raise BulkReadError(f"the bulk read of {', '.join(sorted({str(t) for t in query.get_final_froms()}))} "
                            "could not be parsed (the parser's message is withheld: it quotes the row)") from None
    del buffer
    return pd.DataFrame({key: _as_plain_read(table.column(i)) for i, key in enumerate(keys)}, columns=keys)


def _as_plain_read(values: pa.ChunkedArray) -> pd.Series:
    """One column as ``pd.DataFrame`` infers it from the driver's Python values."""
    if values.null_count == len(values):
        return pd.Series([None] * len(values), dtype=object)
    if pa.types.is_boolean(values.type):
        return pd.Series(values.to_numpy(zero_copy_only=False) if values.null_count == 0 else values.to_pylist(),
                         dtype=bool if values.null_count == 0 else object)
    if pa.types.is_date(values.type):
        return pd.Series(values.to_pandas(date_as_object=True), dtype=object)
    if pa.types.is_integer(values.type):
        return pd.Series(values.to_numpy(), dtype="int64" if values.null_count == 0 else "float64")
    return pd.Series(values.to_pandas(), dtype="str")
