"""The monthly data set flow as plain functions (the DAG's tasks call these; no Airflow import).

Each function takes engines, a :class:`~caldicott.dataset.builder.Period` and a :class:`Settings`, does one
stage, and returns counts only (safe for XCom). Between stages the encrypted archive on disk is the month's
source of truth: later stages decrypt it in memory rather than passing patient data through Airflow.

Files per month, under ``settings.work_dir / YYYY-MM``::

    iapt_YYYY-MM_v2.1.zip.enc   the submission (encrypted)
    report.html, figures.csv, quarantine.csv   data-quality and outcomes report (counts / opaque ids)
    optout_statement.json      which opt-out rule applied to which output, with counts
    commissioner_extract_YYYY-MM.csv.enc   planning extract, after the national data opt-out (encrypted)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from caldicott.dataset import rules, state_tables
from caldicott.dataset.builder import DEFAULT_VERSION, Dataset, Period, build, read_source
from caldicott.dataset.report import write_report
from caldicott.dataset.writer import encrypt, read_archive, write
from caldicott.policy import dataset as policy
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.quarantine import quarantine
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import Intent, Ledger, item_id

log = logging.getLogger(__name__)

FLOW = "monthly_dataset"


@dataclass(frozen=True)
class Settings:
    work_dir: Path
    key: bytes = dataclasses.field(repr=False, default=b"")
    version: str = DEFAULT_VERSION
    org_provider: str = "ZZZ01"
    org_submitter: str | None = None
    pre2020: str = policy.Pre2020Rule.REFERRALS_BEFORE_CUTOVER.value
    intermediate_db: bool = True
    submitter: str = "named-submitter"          # opaque id of the named submitter (recipient in the ledger)
    commissioner: str = "commissioner"          # opaque id of the planning extract's recipient

    def month_dir(self, period: Period) -> Path:
        return self.work_dir / period.key


def _private_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def build_month(records: Engine, period: Period, s: Settings) -> tuple[Dataset, pd.DataFrame, dict]:
    """Read + build + the pre-2020 objection rule. Returns the data set, the patient frame, timings."""
    t0 = time.perf_counter()
    src = read_source(records, period)
    t1 = time.perf_counter()
    ds = build(src, period, version=s.version, org_provider=s.org_provider, org_submitter=s.org_submitter)
    pre = policy.apply_pre2020(ds, src.patients, s.pre2020)
    t2 = time.perf_counter()
    return ds, src.patients, {"read_s": round(t1 - t0, 3), "build_s": round(t2 - t1, 3), "pre2020": pre}


def build_validate_write(records: Engine, state: Engine, period: Period, s: Settings) -> dict:
    """Build the month, screen it (quarantining with rule codes), write the encrypted archive and report."""
    existing = state_tables.get(state, period.key)
    if existing and existing["state"] != state_tables.WRITTEN and Path(existing["archive_path"]).exists():
        log.info("month %s already %s; not rebuilt", period.key, existing["state"])
        return {"run_key": period.key, "state": existing["state"], "rows": existing["row_counts"], "rebuilt": False}
    ds, _patients, timing = build_month(records, period, s)
    t0 = time.perf_counter()
    res = rules.screen(ds)
    quarantine(state, FLOW, period.key, res.quarantined)
    t1 = time.perf_counter()
    if res.file_failures:
        raise RuntimeError(f"data set for {period.key} would be rejected: {', '.join(res.file_failures)}")
    out = s.month_dir(period)
    written = write(ds, out, s.key, with_intermediate_db=s.intermediate_db,
                    extra={"quarantined": len(res.quarantined), "rules_implemented": len(rules.REGISTRY)})
    t2 = time.perf_counter()
    stmt = policy.statement(period.key, mandated_counts=ds.counts(), pre2020=timing["pre2020"],
                            ndop_in_mandated=-1, planning=None, ndop_source="pending")
    _private_write(out / "optout_statement.json", json.dumps(stmt, indent=1, default=str))
    write_report(ds, res.failures, res.quarantined, out, statement=stmt)
    state_tables.register(state, period.key, version=s.version, archive_path=str(written.path), sha256=written.sha256,
                          size_bytes=written.size, row_counts=ds.counts(), quarantined=len(res.quarantined))
    return {"run_key": period.key, "state": "written", "rows": ds.counts(), "quarantined": len(res.quarantined),
            "quarantined_by_rule": res.by_reason, "warnings": {c: n for c, n in res.failures.items()
                                                               if rules.CATALOGUE[c][0] == rules.WARNING},
            "archive_bytes": written.size, "timing_s": {**{k: v for k, v in timing.items() if k != "pre2020"},
                                                        "validate_s": round(t1 - t0, 3),
                                                        "write_s": round(t2 - t1, 3)},
            "pre2020": timing["pre2020"], "rebuilt": True}


def load_month(state: Engine, period: Period, s: Settings) -> dict[str, pd.DataFrame]:
    row = state_tables.get(state, period.key)
    if row is None:
        raise RuntimeError(f"no data set written for {period.key}")
    return read_archive(Path(row["archive_path"]), s.key)


def mpi_numbers(state: Engine, period: Period, s: Settings) -> list[str]:
    """Valid NHS numbers in the month's MPI (the archive was screened, so all present ones are valid)."""
    mpi = load_month(state, period, s)["IDS001MPI"]
    return sorted(mpi["NHSNumber"].dropna().astype(str).unique().tolist())


def ndop_request_id(period: Period) -> str:
    return f"{FLOW}-{period.key}"


def planning_extract(state: Engine, period: Period, s: Settings, opted_out: set[str], checked: set[str],
                     ndop_source: str) -> tuple[bytes, dict]:
    """The commissioner extract after the national data opt-out, encrypted; updates the opt-out statement."""
    tables = load_month(state, period, s)
    ds = Dataset(period, s.version, {k: v for k, v in tables.items() if k != "manifest"})
    extract = policy.planning_extract(ds, org_provider=s.org_provider)
    kept, counts = policy.apply_ndop(extract, opted_out, checked)
    buf = io.StringIO()
    kept.to_csv(buf, index=False)
    blob = encrypt(buf.getvalue().encode(), s.key)
    out = s.month_dir(period)
    _private_write(out / f"commissioner_extract_{period.key}.csv.enc", blob)
    mpi = tables["IDS001MPI"]
    in_mandated = int(mpi["NHSNumber"].isin(list(opted_out)).sum())
    stmt_path = out / "optout_statement.json"
    old = json.loads(stmt_path.read_text()) if stmt_path.exists() else {}
    pre = next((r["counts"] for r in old.get("rules", []) if r["rule"] == "pre2020_dataset_objection"), {})
    stmt = policy.statement(period.key, mandated_counts={k: len(v) for k, v in tables.items() if k != "manifest"},
                            pre2020=pre, ndop_in_mandated=in_mandated, planning=counts, ndop_source=ndop_source)
    _private_write(stmt_path, json.dumps(stmt, indent=1, default=str))
    return blob, {"planning": counts, "ndop_patients_kept_in_submission": in_mandated}


def stage(state: Engine, period: Period, s: Settings, sender: Sender) -> dict:
    """Stage the encrypted archive for the named submitter through the release gateway (exactly once)."""
    from caldicott.gateway import release

    row = state_tables.get(state, period.key)
    if row is None:
        raise RuntimeError(f"no data set written for {period.key}")
    path = Path(row["archive_path"])
    iid = item_id(FLOW, period.key, "submission")
    Ledger(state).record_intent([Intent(iid, FLOW, Purpose.MANDATED_DATASET.value, period.key, s.submitter,
                                        sender.channel, batch_id=period.key)])
    item = Outbound(iid, Purpose.MANDATED_DATASET, s.submitter, sender.channel, path.read_bytes(),
                    Protection.STAGED_ENCRYPTED, address=period.key, headers={"filename": path.name},
                    facts={"validated": True})
    report = release([item], sender, state)
    if report.sent or report.already_sent:
        state_tables.mark_staged(state, period.key, iid)
    return {"run_key": period.key, "item_id": iid, **report.counts()}


def stage_extract(state: Engine, period: Period, s: Settings, blob: bytes, sender: Sender) -> dict:
    """Stage the commissioner extract (national data opt-out applied) through the gateway."""
    from caldicott.gateway import release

    iid = item_id(FLOW, period.key, "commissioner_extract")
    Ledger(state).record_intent([Intent(iid, FLOW, Purpose.PLANNING_EXTRACT.value, period.key, s.commissioner,
                                        sender.channel, batch_id=period.key)])
    item = Outbound(iid, Purpose.PLANNING_EXTRACT, s.commissioner, sender.channel, blob, Protection.STAGED_ENCRYPTED,
                    address=f"{period.key}/commissioner",
                    headers={"filename": f"commissioner_extract_{period.key}.csv.enc"},
                    facts={"ndop_applied": True})
    return {"item_id": iid, **release([item], sender, state).counts()}


def confirm(state: Engine, period: Period, reference: str, by: str | None) -> dict:
    """Record the SDCS portal reference the submitter entered (opaque portal id, no patient data)."""
    ref = (reference or "").strip()
    if not (3 <= len(ref) <= 100) or not ref.replace("-", "").replace("_", "").replace("/", "").isalnum():
        raise ValueError("submission reference must be 3-100 letters, digits, '-', '_' or '/'")
    state_tables.mark_submitted(state, period.key, ref, by)
    Ledger(state).mark_acked(item_id(FLOW, period.key, "submission"), detail="submitted via SDCS portal")
    return {"run_key": period.key, "state": state_tables.SUBMITTED,
            "confirmed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}

