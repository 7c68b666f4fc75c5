"""State for GP letters: the ITK3 acknowledgements received for MESH letters (opaque ids only)."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, String, Table

from caldicott.state.schema import metadata

letter_ack = Table(
    "letter_ack",
    metadata,
    Column("item_id", String(80), primary_key=True, comment="ledger item id of the letter"),
    Column("kind", String(20), primary_key=True, comment="'infrastructure' or 'business'"),
    Column("positive", Boolean, nullable=False),
    Column("code", String(10), nullable=False, comment="ITK3 response code, e.g. 20013, 30001"),
    Column("mesh_message_id", String(100), comment="the ack's MESH message id"),
    Column("received_at", DateTime, nullable=False),
)
