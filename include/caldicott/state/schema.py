"""Caldicott's own state database: the tables every flow shares.

One ``MetaData`` holds every state table. Core tables are here (the delivery ledger lives in
:mod:`caldicott.transport.ledger`, the quarantine here); each area that needs more state declares its
tables in a module named ``state_tables`` inside its package (e.g. ``caldicott.disclosure.state_tables``)
on this same ``metadata``. :func:`caldicott.state.migrate.migrate` discovers those modules, so a new
area adds a table without editing a central list.

SQLite by default, PostgreSQL in production. No patient identifiers beyond the service's own opaque ids
(local patient id, referral id) are stored here, except where a table says so and why.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

#: Applied schema versions; :mod:`caldicott.state.migrate` appends one row per step it applies.
schema_version = Table(
    "caldicott_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime, nullable=False),
)

#: Records held back from a flow, with a reason code anyone on call can look up in the README.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(50), nullable=False, comment="dag id / flow name"),
    Column("run_key", String(100), nullable=False, comment="the data interval or batch the record fell in"),
    Column("record_type", String(40), nullable=False,
           comment="patient, referral, care_contact, ..., or a national table name (IDS606CodedScoreAssessmentRefer)"),
    Column("record_id", String(60), nullable=False, comment="the source's opaque id, never an NHS number"),
    Column("reason_code", String(40), nullable=False, comment="e.g. invalid_nhs_number or an IAPT rule code"),
    Column("reason", Text, nullable=False, comment="explanation free of patient data"),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("flow", "run_key", "record_type", "record_id", "reason_code", name="uq_quarantine_item"),
)
