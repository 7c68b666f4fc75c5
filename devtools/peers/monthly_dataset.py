"""Local configuration stand-ins for the monthly data set (nothing listens; nothing to stop).

* the named submitter's data set key (``CALDICOTT_DATASET_KEY``): a fresh AES-256 key per workspace, kept in
  ``workdir/monthly_dataset/dataset.key`` (0600) so the demo can decrypt what it staged.

The national data opt-out check's configuration (cache key, service mailbox) is in
:mod:`devtools.peers.ndop_config`.
"""

from __future__ import annotations

from pathlib import Path


class MonthlyDatasetConfig:
    name = "monthly_dataset"

    def __init__(self, root: Path) -> None:
        from caldicott.crypto.keys import private_dir, write_private
        from caldicott.dataset.writer import new_key

        self.root = private_dir(Path(root))   # holds the key: 0700
        self.key_file = self.root / "dataset.key"
        if not self.key_file.exists():
            write_private(self.key_file, new_key().encode())
        self.key = self.key_file.read_text().strip()

    def airflow_env(self) -> dict[str, str]:
        return {"CALDICOTT_DATASET_KEY": self.key}

    def stop(self) -> None:
        return None


def start_for_demo(workdir: Path) -> MonthlyDatasetConfig:
    return MonthlyDatasetConfig(Path(workdir) / "monthly_dataset")
