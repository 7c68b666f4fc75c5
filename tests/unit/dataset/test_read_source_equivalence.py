"""read_source's fast read paths give exactly the frames of the plain SQLAlchemy path (issue 12 item 5).

The reference below is the read as it was before the DBAPI-cursor and column-wise conversion paths: SQLAlchemy
``Row`` objects turned into tuples, and SQLite's strict conversion done cell by cell. Every frame of a seeded
synthetic month, with hostile values poked into the file, must be equal (values and dtypes).
"""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from typing import Any

import pandas as pd
import pandas.testing as pdt
import pyarrow as pa
import pytest
from caldicott.dataset import builder
from caldicott.dataset.builder import Period, read_source
from caldicott.db import make_engine, sqlite_url
from caldicott.policy import dataset as policy_dataset
from caldicott.records import pg_copy, queries, synth
from sqlalchemy import String, type_coerce

SEPT = Period.month(2026, 9)


def _reference_checked(engine, query, on_unreadable=None) -> pd.DataFrame:
    checked = queries.checked_columns(engine, query)
    cols = list(query.selected_columns)
    raw = query.with_only_columns(*[type_coerce(c, String).label(c.name) if i in checked else c
                                    for i, c in enumerate(cols)], maintain_column_froms=True)
    with engine.connect() as conn:
        result = conn.execute(raw)
        keys = list(result.keys())
        rows = [list(r) for r in result.fetchall()]
    unreadable = object()
    for i, convert in checked.items():
        for row in rows:
            if row[i] is None:
                continue
            try:
                row[i] = convert(row[i])
            except (ValueError, TypeError, OverflowError):
                row[i] = unreadable
    for row in rows:
        bad = [i for i in checked if row[i] is unreadable]
        if not bad:
            continue
        if on_unreadable is None:
            raise queries.UnreadableValue("unreadable")
        for i in bad:
            row[i] = None
        on_unreadable(dict(zip(keys, row, strict=True)), [keys[i] for i in bad])
    return pd.DataFrame(rows, columns=keys)


def _reference_read(engine, query, on_unreadable=None) -> pd.DataFrame:
    if queries.checked_columns(engine, query):
        return _reference_checked(engine, query, on_unreadable)
    with engine.connect() as conn:
        result = conn.execute(query)
        keys = list(result.keys())
        rows = list(map(tuple, result.fetchall()))
    return pd.DataFrame(rows, columns=keys)


def _frames(engine) -> dict[str, pd.DataFrame]:
    src = read_source(engine, SEPT)
    return {f.name: getattr(src, f.name) for f in fields(src)}


def _assert_same(engine, monkeypatch) -> None:
    fast = _frames(engine)
    with monkeypatch.context() as m:
        m.setattr(builder, "_read", _reference_read)
        slow = _frames(engine)
    assert fast.keys() == slow.keys()
    for name in fast:
        pdt.assert_frame_equal(fast[name], slow[name], check_exact=True, obj=name)
    assert len(fast["contacts"]) and len(fast["patients"]) and len(fast["assessments"])


@pytest.fixture(scope="module")
def small_month():
    return synth.generate(600, 5)


@pytest.mark.parametrize("chunk_rows", [builder.CHUNK_ROWS, 7])
def test_read_source_frames_equal_the_plain_read(small_month, tmp_path, monkeypatch, chunk_rows):
    monkeypatch.setattr(builder, "CHUNK_ROWS", chunk_rows)     # 7: many steps a read, some with all-null columns
    engine = make_engine(sqlite_url(tmp_path / "records.db"))
    synth.write(small_month, engine)
    raw = sqlite3.connect(tmp_path / "records.db")     # values SQLite stores but the column types cannot hold
    raw.execute("UPDATE patient SET dataset_objection_pre2020 = 1 WHERE rowid % 7 = 0")
    raw.execute("UPDATE care_contact SET group_participants = 'many' WHERE rowid % 13 = 0")
    raw.execute("UPDATE care_contact SET contact_at = '2026-09-31 25:00:00' WHERE rowid % 19 = 0")
    raw.execute("UPDATE coded_assessment SET score = 4.5 WHERE rowid % 17 = 0")
    raw.commit()
    _assert_same(make_engine(sqlite_url(tmp_path / "records.db"), readonly=True), monkeypatch)
    # a pre-2020 objection flag neither 0 nor 1 does not stop the month: it counts as an objection (fail closed)
    raw.execute("UPDATE patient SET dataset_objection_pre2020 = 'yes' WHERE rowid % 5 = 0")
    raw.commit()
    raw.close()
    engine = make_engine(sqlite_url(tmp_path / "records.db"), readonly=True)
    patients = read_source(engine, SEPT).patients
    with sqlite3.connect(tmp_path / "records.db") as check:
        garbled = {r[0] for r in check.execute("SELECT local_patient_id FROM patient WHERE rowid % 5 = 0")}
    read_garbled = patients[patients["local_patient_id"].isin(garbled)]
    assert len(read_garbled) and read_garbled["dataset_objection_pre2020"].eq(True).all()
    assert set(policy_dataset.objectors(patients)) >= set(read_garbled["local_patient_id"])


@pytest.mark.parametrize("values", [[1, None, 3], [1, "x", 2.0, 2.5, True, None], [0, 1, None, 2, "1", 1.0]])
def test_column_wise_conversion_matches_cell_by_cell(values):
    for convert in (queries._integer, queries._boolean):
        bad: set[int] = set()
        got = queries._convert_column(list(values), convert, bad)
        want: list[Any] = []
        for v in values:
            try:
                want.append(None if v is None else convert(v))
            except (ValueError, TypeError, OverflowError):
                want.append(queries._UNREADABLE)
        assert got == want and [type(v) for v in got] == [type(v) for v in want]
        assert bad == {i for i, v in enumerate(want) if v is queries._UNREADABLE}


@pytest.mark.parametrize("chunk_rows", [builder.CHUNK_ROWS, 7])
def test_read_source_frames_equal_the_plain_read_on_postgresql(small_month, pg_url, monkeypatch, chunk_rows):
    monkeypatch.setattr(builder, "CHUNK_ROWS", chunk_rows)
    engine = make_engine(pg_url)
    synth.write(small_month, engine)
    _assert_same(engine, monkeypatch)


@pytest.mark.parametrize("values", [
    [1, 2, None, 3, 4, 5],                   # whole numbers, one step all null: float64 as one frame has it
    ["a", None, None, None, "b", "c"],       # text, one step all null: str
    [True, False, None, None, True, True],   # flags with a null: object
    [1, "x", 2, 3, 4, 5],                    # mixed kinds in one step only: object
    [None] * 6,                              # all null
    [1.5, 2, 3, 4, 5, 6],                    # a fraction in one step
    [1.5, None, None, None, 2.5, 3.5],       # fractions, one step all null
    [1, 2, None, None, "x", None],           # whole numbers, then all null, then mixed
])
def test_a_read_in_steps_is_the_frame_of_all_its_rows(values):
    rows = [(i, v) for i, v in enumerate(values)]
    keys = ["n", "v"]
    parts = [pd.DataFrame(rows[i:i + 2], columns=keys) for i in range(0, len(rows), 2)]
    pdt.assert_frame_equal(builder._concat(parts, keys), pd.DataFrame(rows, columns=keys), check_exact=True)


#: Text a records system may hold that CSV must carry exactly: separators, quotes, line breaks, what other readers
#: take for a null, an empty text, backslashes, non-ASCII, leading zeros and spaces.
AWKWARD_TEXT = ["", "NULL", "\\N", "a,b", 'say "hi"', "line\nbreak\r\nend", "back\\slash", "ünïcødé ✓ 中文", "0012",
                "  spaced  ", "nan", "t", "N/A"]


def test_postgresql_bulk_read_carries_any_text_and_nulls_exactly(small_month, pg_url, monkeypatch):
    """The COPY path (caldicott.records.pg_copy) against the row-by-row reference, with awkward text in the text
    columns of contacts, referrals and patients, nulls in flags and dates, and an empty selection."""
    engine = make_engine(pg_url)
    synth.write(small_month, engine)
    with engine.begin() as conn:
        for i, text in enumerate(AWKWARD_TEXT):
            conn.exec_driver_sql("UPDATE care_contact SET procedure_code = %(t)s WHERE care_contact_id IN "
                                 "(SELECT care_contact_id FROM care_contact WHERE contact_at >= '2026-09-02' "
                                 "AND contact_at < '2026-09-29' ORDER BY care_contact_id "
                                 "OFFSET %(i)s LIMIT 3)", {"t": text, "i": i * 3})
            if len(text) <= 10:                                                  # the column's width
                conn.exec_driver_sql("UPDATE patient SET postcode = %(t)s WHERE local_patient_id IN (SELECT "
                                     "local_patient_id FROM patient ORDER BY local_patient_id OFFSET %(i)s "
                                     "LIMIT 2)", {"t": text, "i": i * 2})
        conn.exec_driver_sql("UPDATE patient SET dataset_objection_pre2020 = NULL, dataset_objection_date = NULL "
                             "WHERE local_patient_id IN (SELECT local_patient_id FROM patient "
                             "ORDER BY local_patient_id LIMIT 5)")
        conn.exec_driver_sql("UPDATE patient SET dataset_objection_date = '2019-05-01' WHERE local_patient_id IN "
                             "(SELECT local_patient_id FROM patient ORDER BY local_patient_id DESC LIMIT 5)")
        conn.exec_driver_sql("DELETE FROM overseas_visitor")
    copied: list[str] = []
    original = pg_copy.read_frame

    def counting(eng, query):
        frame = original(eng, query)
        if frame is not None:
            copied.append(str(query.get_final_froms()[0]))
        return frame

    monkeypatch.setattr(pg_copy, "read_frame", counting)
    _assert_same(engine, monkeypatch)
    src = read_source(engine, SEPT)
    assert {"patient", "care_contact", "coded_assessment", "overseas_visitor"} <= set(copied)   # the path ran
    assert set(AWKWARD_TEXT) <= set(src.contacts["procedure_code"].dropna())      # and carried every text
    assert src.patients["dataset_objection_pre2020"].isna().any() and src.overseas.empty


def test_a_bulk_read_parse_failure_names_the_table_not_the_row(small_month, pg_url, monkeypatch):
    """pyarrow's parse errors quote the row they failed on (patient data): the error raised names the table only,
    and carries neither the parser's message nor its exception (a traceback would print a chained one)."""
    engine = make_engine(pg_url)
    synth.write(small_month, engine)

    def failing(*_args, **_kwargs):
        raise pa.ArrowInvalid("CSV parse error: Expected 7 columns, got 8: P0001,9990000018,Ava Smith")

    monkeypatch.setattr(pg_copy.pa_csv, "read_csv", failing)
    with pytest.raises(pg_copy.BulkReadError) as caught:
        read_source(engine, SEPT)
    assert "referral" in str(caught.value)
    assert "999" not in str(caught.value) and "Ava" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
