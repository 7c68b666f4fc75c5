"""Local configuration stand-ins for the monthly data set (nothing listens; nothing to stop).

* the named submitter's data set key (``CALDICOTT_DATASET_KEY``): a fresh AES-256 key per workspace, kept in
  ``workdir/monthly_dataset/dataset.key`` (0600) so the demo can decrypt what it staged;
* the NDOP service mailbox on the mesh-sandbox (``CALDICOTT_NDOP_MAILBOX``), answered by
  :class:`devtools.peers.ndop_responder.NdopResponder` when a test or the demo starts it.
"""

from __future__ import annotations

import os
from pathlib import Path

from devtools.peers.ndop_responder import SERVICE_MAILBOX


class MonthlyDatasetConfig:
    name = "monthly_dataset"

    def __init__(self, root: Path) -> None:
        from caldicott.dataset.writer import new_key

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_file = self.root / "dataset.key"
        if not self.key_file.exists():
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(new_key())
        self.key = self.key_file.read_text().strip()

    def airflow_env(self) -> dict[str, str]:
        return {"CALDICOTT_DATASET_KEY": self.key, "CALDICOTT_NDOP_MAILBOX": SERVICE_MAILBOX}

    def stop(self) -> None:
        return None


def start_for_demo(workdir: Path) -> MonthlyDatasetConfig:
    return MonthlyDatasetConfig(Path(workdir) / "monthly_dataset")
