"""Read queries against the clinical-records source, returning DataFrames.

Queries bind their parameters; intervals are half-open ``[start, end)``. Every function takes an
engine so the same code reads the demo's SQLite file and the provider's PostgreSQL database.

SQLite (the demo's source, and any provider who exports to it) stores whatever it is given: an impossible
date such as ``2026-02-30`` or text in an integer column. PostgreSQL refuses those at the door. Read
strictly, one such cell would crash a whole run (SQLAlchemy's date parser raises) or crash later in
arithmetic; so :func:`read` converts typed columns itself on SQLite and hands each unreadable row to the
caller's ``on_unreadable`` callback (which quarantines its record), or raises :class:`UnreadableValue`
naming the table and column, never the value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Boolean, Date, DateTime, Engine, Integer, Select, String, select, type_coerce
from sqlalchemy.sql.expression import ColumnElement, false

from caldicott.records import schema

#: Called with a row (unreadable cells set to None) and the names of its unreadable columns.
OnUnreadable = Callable[[dict[str, Any], list[str]], None]

#: A SELECT of any columns (what :func:`read` runs).
AnySelect = Select[*tuple[Any, ...]]

#: A strict converter of one stored value; raises ValueError / TypeError / OverflowError when it cannot.
Converter = Callable[[object], object]


class UnreadableValue(ValueError):
    """A stored value its column's type cannot hold; the message names the column, never the value."""


def read(engine: Engine, query: AnySelect, on_unreadable: OnUnreadable | None = None) -> pd.DataFrame:
    """Run ``query`` and return a DataFrame (columns named as selected).

    On SQLite, cells of date, time, integer and boolean columns that their type cannot hold become None and
    the row is also passed to ``on_unreadable`` (so the caller can quarantine its record: the row stays in
    the frame, nothing vanishes silently); without a callback the first one raises :class:`UnreadableValue`.
    """
    checked = checked_columns(engine, query)
    if not checked:
        with engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    cols = list(query.selected_columns)
    raw = query.with_only_columns(*[type_coerce(c, String).label(c.name) if i in checked else c
                                    for i, c in enumerate(cols)], maintain_column_froms=True)
    with engine.connect() as conn:
        result = conn.execute(raw)
        keys = list(result.keys())
        rows = result.fetchall()
    # column by column: a column whose stored values all already fit its type (the usual case) is checked with
    # one pass over the value types, not one converter call per cell
    columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in keys]
    bad_rows: set[int] = set()
    for i, convert in checked.items():
        columns[i] = _convert_column(columns[i], convert, bad_rows)
    for n in sorted(bad_rows):
        bad = [i for i in checked if columns[i][n] is _UNREADABLE]
        if on_unreadable is None:
            raise UnreadableValue(f"{_where(cols[bad[0]])}: a stored value cannot be read as its column's type")
        for i in bad:
            columns[i][n] = None
        on_unreadable({k: columns[j][n] for j, k in enumerate(keys)}, [keys[i] for i in bad])
    return pd.DataFrame(list(zip(*columns, strict=True)) if rows else [], columns=keys)


def _convert_column(values: list[Any], convert: Converter, bad_rows: set[int]) -> list[Any]:
    """``values`` converted by ``convert`` (None stays None); unconvertible cells become ``_UNREADABLE`` and their
    row numbers are added to ``bad_rows``."""
    kinds = set(map(type, values))
    if convert is _integer and kinds <= {int, type(None)}:
        return values                                  # what _integer returns for each: the same int
    if convert is _boolean and kinds <= {int, type(None)} and set(values) <= {0, 1, None}:
        return [None if v is None else bool(v) for v in values]
    out = []
    for n, v in enumerate(values):
        if v is not None:
            try:
                v = convert(v)
            except (ValueError, TypeError, OverflowError):
                v = _UNREADABLE
                bad_rows.add(n)
        out.append(v)
    return out


#: Marks a cell that failed conversion (None is a legitimate stored NULL).
_UNREADABLE = object()


def _where(col: ColumnElement[Any]) -> str:
    table = getattr(getattr(col, "table", None), "name", None)
    return f"{table}.{col.name}" if table else str(col.name)


def checked_columns(engine: Engine, query: AnySelect) -> dict[int, Converter]:
    """Typed columns whose stored values SQLite does not enforce, with a strict converter for each."""
    if engine.dialect.name != "sqlite":
        return {}
    out: dict[int, Converter] = {}
    for i, col in enumerate(query.selected_columns):
        t = col.type
        if isinstance(t, Date | DateTime):
            proc = t.dialect_impl(engine.dialect).result_processor(engine.dialect, None)
            out[i] = _strict(proc, dt.datetime if isinstance(t, DateTime) else dt.date)
        elif isinstance(t, Boolean):
            out[i] = _boolean
        elif isinstance(t, Integer):
            out[i] = _integer
    return out


def _strict(proc: Callable[[Any], Any] | None, kind: type) -> Converter:
    def convert(v: object) -> object:
        if isinstance(v, kind):
            return v
        if not isinstance(v, str) or proc is None:
            raise TypeError
        return proc(v)
    return convert


def _integer(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not v.is_integer()):
        raise TypeError
    return int(v)


def _boolean(v: object) -> bool:
    if v not in (0, 1):
        raise TypeError
    return bool(v)


def table(engine: Engine, name: str, columns: Sequence[str] | None = None,
          on_unreadable: OnUnreadable | None = None) -> pd.DataFrame:
    """A whole source table (or some of its columns). For small tables: practices, organisations, contracts."""
    t = schema.metadata.tables[name]
    cols = [t.c[c] for c in columns] if columns else list(t.c)
    return read(engine, select(*cols), on_unreadable)


def patients(engine: Engine, ids: Sequence[str] | None = None,
             on_unreadable: OnUnreadable | None = None) -> pd.DataFrame:
    """Patients, optionally only those with the given local ids (chunked to respect bind limits)."""
    t = schema.patient
    if ids is None:
        return read(engine, select(t), on_unreadable)
    frames = [read(engine, select(t).where(t.c.local_patient_id.in_(list(ids[i:i + 900]))), on_unreadable)
              for i in range(0, len(ids), 900)]
    return pd.concat(frames, ignore_index=True) if frames else read(engine, select(t).where(false()))


def referrals_received(engine: Engine, start: dt.date, end: dt.date) -> pd.DataFrame:
    t = schema.referral
    return read(engine, select(t).where(t.c.received_date >= start, t.c.received_date < end))


def referrals_discharged(engine: Engine, start: dt.date, end: dt.date,
                         on_unreadable: OnUnreadable | None = None) -> pd.DataFrame:
    t = schema.referral
    return read(engine, select(t).where(t.c.discharge_date >= start, t.c.discharge_date < end), on_unreadable)


def contacts_between(engine: Engine, start_utc: dt.datetime, end_utc: dt.datetime) -> pd.DataFrame:
    """Care contacts whose UTC instant falls in ``[start_utc, end_utc)``."""
    t = schema.care_contact
    return read(engine, select(t).where(t.c.contact_at >= start_utc, t.c.contact_at < end_utc))
