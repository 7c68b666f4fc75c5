"""State of the national data opt-out check: the time-limited answers and the requests awaiting a reply.

Neither table holds an NHS number in clear. Answers are keyed by HMAC-SHA256 of the number under a key derived
from the deployment's secret (Airflow connection ``caldicott_ndop_cache_key``): without the secret the keys
cannot be enumerated over the 10-digit space, as a plain SHA-256 could. An outstanding request keeps its file
(the list of numbers asked, needed to tell who is missing from the reply) sealed with AES-256-GCM under another
key derived from the same secret, only until the reply arrives or the request goes stale
(:mod:`caldicott.policy.ndop_cache`).

Discovered by :mod:`caldicott.state.migrate` (a ``state_tables`` module). Migration step 2 removed the rows of
the earlier, unsalted cache and the earlier request table, whose request files waited in clear on disk.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, LargeBinary, String, Table

from caldicott.state.schema import metadata

#: Opt-out status with an expiry; never stored on a patient record.
ndop_cache = Table(
    "ndop_cache",
    metadata,
    Column("nhs_hash", String(64), primary_key=True,
           comment="HMAC-SHA256 of the NHS number under a key derived from caldicott_ndop_cache_key (hex)"),
    Column("opted_out", Boolean, nullable=False),
    Column("checked_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
    Column("request_id", String(100), nullable=False, comment="the check request that established it"),
)

#: One row per request file sent to NHS England: its ledger item and, until answered, its sealed contents.
ndop_request_file = Table(
    "ndop_request_file",
    metadata,
    Column("file_id", String(120), primary_key=True, comment="<request id>-<n>; the MESH file name is <file_id>.dat"),
    Column("request_id", String(100), nullable=False, index=True, comment="the caller's request (e.g. the month)"),
    Column("seq", Integer, nullable=False, comment="n-th file of this request id"),
    Column("item_id", String(80), nullable=False, comment="delivery ledger item (purpose ndop_check)"),
    Column("numbers", Integer, nullable=False, comment="how many NHS numbers it asks about"),
    Column("sealed", LargeBinary, comment="the request file, AES-256-GCM sealed; erased once answered or stale"),
    Column("created_at", DateTime, nullable=False),
    Column("closed_at", DateTime, comment="answered, abandoned as stale, or refused by the gateway"),
    Column("outcome", String(20), comment="replied, stale, refused"),
)
