"""Local configuration stand-ins for the monthly data set (nothing listens; nothing to stop).

* the named submitter's data set key (``CALDICOTT_DATASET_KEY``): a fresh AES-256 key per workspace, kept in
  ``workdir/monthly_dataset/dataset.key`` (0600) so the demo can decrypt what it staged;
* a submission calendar for the synthetic records (``CALDICOTT_DATASET_CALENDAR``):
  ``workdir/monthly_dataset/demo_calendar.tsv``. NHS England's published calendar (bundled) ends with the window of
  March 2025, and the synthetic records are of 2020-2026, so the demo loads a calendar of its own, exactly as a
  service loads next year's (docs/runbook.md). It is NOT NHS England's: its windows open on the 1st like the real
  ones, but stay open for a year after the workspace was made, so that any month of the records can be submitted
  whatever today's date. Tests that need a closed window set the Variable ``caldicott_dataset_calendar``.

The national data opt-out check's configuration (cache key, service mailbox) is in
:mod:`devtools.peers.ndop_config`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

#: the months the demo calendar takes as primary periods
FIRST_PERIOD, LAST_PERIOD = "2025-04", "2027-12"
COMMENT = ("SYNTHETIC calendar for the Caldicott demo and tests: NOT NHS England's.\n"
           "Windows open on the 1st like the published ones but close a year after the workspace was made,\n"
           "so that any month of the synthetic records can be submitted. A deployment loads NHS England's calendar.")


def demo_windows(made: dt.date):
    """One window per primary period, opening on the 1st of the month after it, closing a year after ``made``."""
    from caldicott.dataset.calendar import Window, month_after, month_before

    closes = made + dt.timedelta(days=365)
    windows, period = [], FIRST_PERIOD
    while period <= LAST_PERIOD:
        opens = dt.date.fromisoformat(f"{month_after(period)}-01")
        windows.append(Window(opens, max(closes, opens), month_before(period), period))
        period = month_after(period)
    return windows


class MonthlyDatasetConfig:
    name = "monthly_dataset"

    def __init__(self, root: Path) -> None:
        from caldicott.crypto.keys import private_dir, write_private
        from caldicott.dataset.calendar import render
        from caldicott.dataset.writer import new_key

        self.root = private_dir(Path(root))   # holds the key: 0700
        self.key_file = self.root / "dataset.key"
        if not self.key_file.exists():
            write_private(self.key_file, new_key().encode())
        self.key = self.key_file.read_text().strip()
        self.calendar_file = self.root / "demo_calendar.tsv"     # made afresh at every start: open from today
        self.calendar_file.write_text(render(demo_windows(dt.date.today()), COMMENT))

    def airflow_env(self) -> dict[str, str]:
        return {"CALDICOTT_DATASET_KEY": self.key, "CALDICOTT_DATASET_CALENDAR": str(self.calendar_file)}

    def stop(self) -> None:
        return None


def start_for_demo(workdir: Path) -> MonthlyDatasetConfig:
    return MonthlyDatasetConfig(Path(workdir) / "monthly_dataset")
