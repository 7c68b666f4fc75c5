"""State for transports: the MESH outbox journal (opaque ids only).

MESH assigns a message id when it accepts a message; its current tracking endpoint
(``GET /messageexchange/{mailbox}/outbox/tracking?messageID=``) answers only by that id (tracking by local id is
deprecated, and GP Connect fixes the local id to the sender's ODS code). So the id is written here the moment MESH
returns it, before anything else, and crash recovery asks MESH about exactly that message
(:mod:`caldicott.transport.mesh_journal`).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, String, Table

from caldicott.state.schema import metadata

mesh_outbox = Table(
    "mesh_outbox",
    metadata,
    Column("item_id", String(80), primary_key=True, comment="ledger item id of the outbound item"),
    Column("state", String(12), nullable=False, comment="'posting' (no reply from MESH yet) or 'accepted'"),
    Column("message_id", String(100), comment="the id MESH returned for the message"),
    Column("chunks", Integer, nullable=False, default=1, comment="how many chunks the message was sent in"),
    Column("updated_at", DateTime, nullable=False),
)
