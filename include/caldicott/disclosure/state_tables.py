"""The append-only disclosure register (docs/disclosures.md), declared on the state metadata.

Every fact about a request is an event row; nothing is updated or deleted (a PostgreSQL trigger or
grants can enforce that in production; :mod:`caldicott.disclosure.register` only ever inserts). The
register, not Airflow's HITL record, is the record: clearing a HITL task erases Airflow's copy.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Integer, LargeBinary, String, Table

from caldicott.state.schema import metadata

disclosure_event = Table(
    "disclosure_event",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("disclosure_id", String(40), nullable=False, index=True),
    Column("event", String(30), nullable=False,
           comment="requested, package_built, approved, refused, escalated, released, patient_notified ..."),
    Column("at", DateTime, nullable=False),
    Column("actor", String(100), nullable=False, comment="who did it: an Airflow user name or 'caldicott'"),
    Column("details", JSON, nullable=False, comment="the event's facts; opaque ids only, never patient data"),
)

#: The encrypted packages built for requests, kept so the bytes approved are the bytes released.
#: ``content`` is the CMS envelope to the requester's certificate: unreadable at rest to anyone but them (DER;
#: for channel ``smime-email`` the same envelope as the S/MIME part the e-mail carries, see disclosure.mail).
disclosure_package = Table(
    "disclosure_package",
    metadata,
    Column("package_checksum", String(64), primary_key=True, comment="sha256 of the encrypted bytes"),
    Column("disclosure_id", String(40), nullable=False, index=True),
    Column("content", LargeBinary, nullable=False,
           comment="CMS EnvelopedData to the requester (DER, or its S/MIME part)"),
    Column("plaintext_checksum", String(64), nullable=False, comment="sha256 of the package before encryption"),
    Column("built_at", DateTime, nullable=False),
)
