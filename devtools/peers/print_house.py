"""The print-and-post house, as far as Caldicott sees it: a certificate to encrypt posted copies to, and
where the day's batch lands (encrypted at rest; see ``caldicott.transport.post``).

Two shapes, as the ``caldicott_print`` connection allows:

* ``PrintHouse(root, sftp=True)`` (the demo and e2e): the print house's own SFTP server on 127.0.0.1
  (asyncssh, ``devtools/peers/sftp.py``); ``airflow_env()`` gives an SFTP connection with the pinned host
  key, ``remote_path`` ``/batches`` and ``certificate_path``;
* ``PrintHouse(root)``: a local staging folder (``staging_dir``), as a service whose print house collects.

The private key stays here, with the peer, for tests to open the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from caldicott.crypto.keys import cached_identity

CONN_ID = "caldicott_print"
REMOTE_PATH = "/batches"


class PrintHouse:
    name = "print_house"

    def __init__(self, root: Path, *, sftp: bool = False) -> None:
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.identity = cached_identity(self.root / "keys", "PRINTHOUSE")
        self.cert_path = self.root / "keys" / "PRINTHOUSE.crt"
        self.sftp = None
        if sftp:
            from devtools.peers.sftp import SftpPeer

            self.sftp = SftpPeer(self.root, username="printhouse").start()

    @property
    def landing(self) -> Path:
        """Where the batches arrive: the SFTP server's batch folder, or the staging folder."""
        return self.sftp.root / REMOTE_PATH.lstrip("/") if self.sftp is not None else self.staging

    def files(self) -> list[Path]:
        return sorted(self.landing.rglob("*.pdf.p7m"))

    def airflow_env(self) -> dict[str, str]:
        if self.sftp is not None:
            conn = self.sftp.connection(remote_path=REMOTE_PATH, certificate_path=str(self.cert_path))
        else:
            conn = {"conn_type": "generic",
                    "extra": {"staging_dir": str(self.staging), "certificate_path": str(self.cert_path)}}
        return {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn)}

    def stop(self) -> None:
        if self.sftp is not None:
            self.sftp.stop()
            self.sftp = None


def start_for_demo(workdir: Path) -> PrintHouse:
    return PrintHouse(Path(workdir) / "print_house", sftp=True)
