"""The print-and-post house, as far as Caldicott sees it: a certificate to encrypt posted copies to, and
a staging folder the day's batch is written to (encrypted at rest; see ``caldicott.transport.post``).

``airflow_env()`` gives ``AIRFLOW_CONN_CALDICOTT_PRINT`` (extras: ``staging_dir``, ``certificate_path``).
The private key stays here, with the peer, for tests to open the batch. When the referrer-updates SFTP
sender is in place the batch folder can be shipped to the print house over SFTP instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from caldicott.crypto.keys import cached_identity

CONN_ID = "caldicott_print"


class PrintHouse:
    name = "print_house"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.identity = cached_identity(self.root / "keys", "PRINTHOUSE")
        self.cert_path = self.root / "keys" / "PRINTHOUSE.crt"

    def files(self) -> list[Path]:
        return sorted(self.staging.rglob("*.pdf.p7m"))

    def airflow_env(self) -> dict[str, str]:
        return {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({
            "conn_type": "generic",
            "extra": {"staging_dir": str(self.staging), "certificate_path": str(self.cert_path)}})}

    def stop(self) -> None:
        pass


def start_for_demo(workdir: Path) -> PrintHouse:
    return PrintHouse(Path(workdir) / "print_house")
