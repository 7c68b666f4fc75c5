"""Local configuration of the national data opt-out check (nothing listens; nothing to stop).

* the cache key: a fresh secret per workspace in ``workdir/ndop/cache.key`` (0600, folder 0700), given to Airflow as the
  password of connection ``caldicott_ndop_cache_key`` (production: a secrets backend; no key, no check);
* NHS England's opt-out service mailbox on the mesh-sandbox (``CALDICOTT_NDOP_MAILBOX``), answered by
  :class:`devtools.peers.ndop_responder.NdopResponder` when a test or the demo starts it.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from caldicott.crypto.keys import private_dir, write_private

from devtools.peers.ndop_responder import SERVICE_MAILBOX

CACHE_KEY_CONN_ID = "caldicott_ndop_cache_key"


def cache_key_file(path: Path) -> str:
    """The secret in ``path``, made on first use: 0600 from its first byte, in a folder only the owner can enter
    (0700, tightened if it was looser) — :func:`caldicott.crypto.keys.write_private`."""
    private_dir(path.parent)
    if not path.exists():
        write_private(path, secrets.token_urlsafe(48).encode())
    return path.read_text().strip()


class NdopConfig:
    name = "ndop"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.key = cache_key_file(self.root / "cache.key")

    def airflow_env(self) -> dict[str, str]:
        conn = {"conn_type": "generic", "password": self.key}
        return {f"AIRFLOW_CONN_{CACHE_KEY_CONN_ID.upper()}": json.dumps(conn),
                "CALDICOTT_NDOP_MAILBOX": SERVICE_MAILBOX}

    def stop(self) -> None:
        return None


def start_for_demo(workdir: Path) -> NdopConfig:
    return NdopConfig(Path(workdir) / "ndop")
