"""The receiving providers of the local records source (transfer of care), as the stand-in peers need them.

The synthetic generator (``caldicott.records.synth``) writes the providers patients are referred on to into the
``organisation`` table (``kind = 'provider'``): some take their reports over MESH (``mesh_mailbox``), some over
their own SFTP server (``connection_id``, ``remote_path``). The stand-in MESH sandbox must know those mailboxes and
the demo's Airflow must have those SFTP connections; both are read from the table here, so a generator that adds
or renumbers providers needs no edit in devtools. A source that does not exist yet, or has no such columns, has
no providers (the peers then start as before).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Provider:
    ods_code: str
    channel: str | None
    mesh_mailbox: str | None
    connection_id: str | None
    remote_path: str | None


def receiving_providers(records_db: Path | str | None) -> list[Provider]:
    """Every ``organisation`` row of kind ``provider`` in the SQLite records source ``records_db``."""
    if records_db is None or not Path(records_db).exists():
        return []
    db = sqlite3.connect(f"file:{Path(records_db).resolve()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT ods_code, channel, mesh_mailbox, connection_id, remote_path FROM organisation "
                          "WHERE kind = 'provider' ORDER BY ods_code").fetchall()
    except sqlite3.Error:   # an older source without the providers' columns
        return []
    finally:
        db.close()
    return [Provider(*(str(v) if v is not None else None for v in row)) for row in rows]


def mesh_mailboxes(providers: list[Provider]) -> list[str]:
    """The MESH mailboxes the providers collect their reports from."""
    return sorted({p.mesh_mailbox.strip().upper() for p in providers if p.channel == "mesh" and p.mesh_mailbox})


def sftp_connections(providers: list[Provider]) -> dict[str, str]:
    """Connection id -> remote path, for the providers that take their reports on their own SFTP server."""
    return {p.connection_id: p.remote_path or "/" for p in providers if p.channel == "sftp" and p.connection_id}
