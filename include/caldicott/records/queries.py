"""Read queries against the clinical-records source, returning DataFrames.

Queries bind their parameters; intervals are half-open ``[start, end)``. Every function takes an
engine so the same code reads the demo's SQLite file and the provider's PostgreSQL database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
from sqlalchemy import Engine, Select, select

from caldicott.records import schema


def read(engine: Engine, query: Select) -> pd.DataFrame:
    """Run ``query`` and return a DataFrame (columns named as selected)."""
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def table(engine: Engine, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A whole source table (or some of its columns). For small tables: practices, organisations, contracts."""
    t = schema.metadata.tables[name]
    cols = [t.c[c] for c in columns] if columns else list(t.c)
    return read(engine, select(*cols))


def patients(engine: Engine, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Patients, optionally only those with the given local ids (chunked to respect bind limits)."""
    t = schema.patient
    if ids is None:
        return read(engine, select(t))
    frames = [read(engine, select(t).where(t.c.local_patient_id.in_(list(ids[i:i + 900]))))
              for i in range(0, len(ids), 900)]
    return pd.concat(frames, ignore_index=True) if frames else read(engine, select(t).where(False))


def referrals_received(engine: Engine, start: dt.date, end: dt.date) -> pd.DataFrame:
    t = schema.referral
    return read(engine, select(t).where(t.c.received_date >= start, t.c.received_date < end))


def referrals_discharged(engine: Engine, start: dt.date, end: dt.date) -> pd.DataFrame:
    t = schema.referral
    return read(engine, select(t).where(t.c.discharge_date >= start, t.c.discharge_date < end))


def contacts_between(engine: Engine, start_utc: dt.datetime, end_utc: dt.datetime) -> pd.DataFrame:
    """Care contacts whose UTC instant falls in ``[start_utc, end_utc)``."""
    t = schema.care_contact
    return read(engine, select(t).where(t.c.contact_at >= start_utc, t.c.contact_at < end_utc))
