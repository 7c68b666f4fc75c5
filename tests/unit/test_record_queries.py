"""``queries.read`` on a SQLite source that holds values its column types cannot (finding 7, docs/reliability.md)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from caldicott.db import make_engine, sqlite_url
from caldicott.records import queries

PEOPLE = sa.Table("people", sa.MetaData(), sa.Column("local_patient_id", sa.String, primary_key=True),
                  sa.Column("birth_date", sa.Date), sa.Column("consent", sa.Boolean))


@pytest.fixture
def source(tmp_path):
    engine = make_engine(sqlite_url(tmp_path / "records.db"))
    PEOPLE.create(engine)
    with engine.begin() as conn:   # raw SQL: what a loosely typed export can leave in a SQLite file
        conn.execute(sa.text("INSERT INTO people VALUES ('P1', '1980-01-31', 1), ('P2', '2026-02-30', 1), "
                             "('P3', NULL, 1), ('P4', '1990-05-06', 1)"))
    return engine


def test_an_unreadable_cell_goes_to_the_callback_and_the_row_stays(source):
    seen: list[tuple[str, list[str]]] = []
    df = queries.read(source, sa.select(PEOPLE).order_by(PEOPLE.c.local_patient_id),
                      lambda row, cols: seen.append((row["local_patient_id"], cols)))
    assert seen == [("P2", ["birth_date"])]
    assert list(df["local_patient_id"]) == ["P1", "P2", "P3", "P4"]
    assert df.set_index("local_patient_id").at["P1", "birth_date"] == dt.date(1980, 1, 31)
    assert df.set_index("local_patient_id").at["P2", "birth_date"] is None     # unreadable
    assert df["consent"].tolist() == [True] * 4                   # booleans still booleans


def test_without_a_callback_the_error_names_the_column_never_the_value(source):
    with pytest.raises(queries.UnreadableValue) as err:
        queries.read(source, sa.select(PEOPLE))
    assert "people.birth_date" in str(err.value) and "2026-02-30" not in str(err.value)


def test_text_in_an_integer_column_is_unreadable(tmp_path):
    engine = make_engine(sqlite_url(tmp_path / "r.db"))
    t = sa.Table("scores", sa.MetaData(), sa.Column("id", sa.String, primary_key=True), sa.Column("score", sa.Integer))
    t.create(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO scores VALUES ('a', 12), ('b', 'abc'), ('c', 7.5), ('d', NULL)"))
    bad: list[str] = []
    df = queries.read(engine, sa.select(t).order_by(t.c.id), lambda row, cols: bad.append(row["id"]))
    assert bad == ["b", "c"]
    assert df.set_index("id").at["a", "score"] == 12
