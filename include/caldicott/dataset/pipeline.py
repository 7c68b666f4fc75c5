"""The monthly data set flow as plain functions (the DAG's tasks call these; no Airflow import).

Each function takes engines, a :class:`~caldicott.dataset.builder.Period`, the submission's
:class:`~caldicott.dataset.calendar.Kind` (primary or refresh) and a :class:`Settings`, does one stage, and returns
counts only (safe for XCom). Between stages the encrypted archive on disk is the submission's source of truth:
later stages decrypt it in memory rather than passing patient data through Airflow.

Files per submission, under ``settings.month_dir(period, kind)`` (``work_dir/YYYY-MM`` for the primary,
``work_dir/YYYY-MM/refresh`` for the refresh)::

    iapt_YYYY-MM_v2.1.zip.enc   the submission (encrypted): Parquet + IDB CSV per table + manifest
                                (the refresh: iapt_YYYY-MM_v2.1_refresh.zip.enc)
    report.html, figures.csv, quarantine.csv   data-quality and outcomes report (counts / opaque ids)
    optout_statement.json      which opt-out rule applied to which output, with counts
    commissioner_extract_YYYY-MM.csv.enc   planning extract, after the national data opt-out (primary only)

Nothing else is written, and nothing in clear holds patient data: the archive is made in memory and only its
ciphertext touches the disk (:func:`caldicott.dataset.writer.write`; leftovers of a killed run are swept first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import pandas as pd
from sqlalchemy import Engine

from caldicott.dataset import rules, state_tables, writer
from caldicott.dataset.builder import DEFAULT_VERSION, Dataset, Period, build, read_source
from caldicott.dataset.calendar import Kind, Window, month_before
from caldicott.dataset.idb import to_builder_names
from caldicott.dataset.report import Provider, facts, trend, write_quarantine, write_report
from caldicott.dataset.submit import WindowMissed, submission_item_id
from caldicott.dataset.writer import encrypt, read_archive
from caldicott.policy import dataset as policy
from caldicott.policy.evidence import Evidence, establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.quarantine import quarantine
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import DONE, Intent, Ledger, item_id

log = logging.getLogger(__name__)

FLOW = "monthly_dataset"


class EmptyMonth(RuntimeError):
    """The records source has nothing for the period: most likely the wrong source, or one not loaded yet."""


@dataclass(frozen=True)
class Settings:
    work_dir: Path
    key: bytes = dataclasses.field(repr=False, default=b"")
    version: str = DEFAULT_VERSION
    org_provider: str = ""                      # OrgIDProv: the deployment's ODS code (required; no default)
    org_submitter: str | None = None
    pre2020: str = policy.Pre2020Rule.REFERRALS_BEFORE_CUTOVER.value
    submitter: str = "named-submitter"          # opaque id of the named submitter (recipient in the ledger)
    commissioner: str = "commissioner"          # opaque id of the planning extract's recipient
    provider_name: str = ""                     # for the report's heading

    def month_dir(self, period: Period, kind: Kind | str = Kind.PRIMARY) -> Path:
        base = self.work_dir / period.key
        return base if Kind(kind) == Kind.PRIMARY else base / Kind(kind).value

    def archive_name(self, period: Period, kind: Kind | str = Kind.PRIMARY) -> str:
        tail = "" if Kind(kind) == Kind.PRIMARY else f"_{Kind(kind).value}"
        return f"iapt_{period.key}_v{self.version}{tail}.zip.enc"

    @property
    def provider(self) -> Provider:
        return Provider(self.org_provider, self.provider_name)


def _private_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


class MonthTiming(TypedDict):
    """What :func:`build_month` reports beside the data set: seconds to read and to build, and the pre-2020 objection
    rule's counts (:func:`caldicott.policy.dataset.apply_pre2020`)."""

    read_s: float
    build_s: float
    pre2020: dict[str, Any]


def build_month(records: Engine, period: Period, s: Settings) -> tuple[Dataset, pd.DataFrame, MonthTiming]:
    """Read + build + the pre-2020 objection rule. Returns the data set, the patient frame, timings."""
    t0 = time.perf_counter()
    src = read_source(records, period)
    patients = src.patients
    t1 = time.perf_counter()
    # the source is handed over (build empties it): only the patients are needed after the build, and a national
    # month's contacts and scores must not outlive their tables (peak memory)
    ds = build(src, period, version=s.version, org_provider=s.org_provider, org_submitter=s.org_submitter,
               consume=True)
    pre = policy.apply_pre2020(ds, patients, s.pre2020)
    t2 = time.perf_counter()
    return ds, patients, {"read_s": round(t1 - t0, 3), "build_s": round(t2 - t1, 3), "pre2020": pre}


def _statement_path(s: Settings, period: Period, kind: Kind) -> Path:
    return s.month_dir(period, kind) / "optout_statement.json"


def render_report(state: Engine, period: Period, s: Settings, kind: Kind | str = Kind.PRIMARY, *,
                  window: Window | None = None) -> Path:
    """(Re)write the submission's report from the state database (its figures, the 12-month trend) and its opt-out
    statement: after the build, and again when NHS England's opt-out check has answered."""
    kind = Kind(kind)
    row = state_tables.get(state, period.key, kind)
    if row is None:
        raise RuntimeError(f"no data set written for {period.key} ({kind.value})")
    stmt_path = _statement_path(s, period, kind)
    statement = json.loads(stmt_path.read_text()) if stmt_path.exists() else None
    first = period.key
    for _ in range(11):
        first = month_before(first)
    rows = state_tables.history(state, first, period.key)
    win = window.as_dict() if window is not None else None
    files = write_report(s.month_dir(period, kind), period=period.key, kind=kind.value, version=str(row["version"]),
                         provider=s.provider, facts=row["facts"] or {}, statement=statement,
                         trend_rows=trend(rows, period.key), window=win)
    return files.html


def build_validate_write(records: Engine, state: Engine, period: Period, s: Settings,
                         kind: Kind | str = Kind.PRIMARY, *, window: Window | None = None,
                         now: dt.datetime | None = None) -> dict[str, Any]:
    """Build the submission, screen it (quarantining with rule codes), write the encrypted archive and report.

    A submission already staged or submitted is not rebuilt (what left must stay what is on record). One whose
    ``window`` has closed before it left is not built: :class:`~caldicott.dataset.submit.WindowMissed`. A period with
    no referral at all raises :class:`EmptyMonth`: a run that did nothing must not pass for a submission (and NHS
    England rejects an empty file anyway: IDSREJ003/004/005).
    """
    kind = Kind(kind)
    existing = state_tables.get(state, period.key, kind)
    base = {"run_key": period.key, "kind": kind.value}
    entry = Ledger(state).get(submission_item_id(period, kind))
    if existing and Path(existing["archive_path"]).exists() and (
            existing["state"] in (state_tables.STAGED, state_tables.SUBMITTED) or (entry and entry.state in DONE)):
        log.info("%s %s already %s; not rebuilt", period.key, kind.value, existing["state"])
        return {**base, "state": existing["state"], "rows": existing["row_counts"], "rebuilt": False,
                "quarantined": existing["quarantined"], "confirmed": existing["state"] == state_tables.SUBMITTED}
    if window is not None and window.is_closed(now or dt.datetime.now(dt.UTC)):
        if existing is not None:
            state_tables.mark_missed(state, period.key, kind)
        raise WindowMissed(period.key, kind, window, "before it was built")
    out = s.month_dir(period, kind)
    swept = writer.sweep(out)
    if swept:
        log.warning("%s %s: removed %d file(s) a killed run left", period.key, kind.value, len(swept))
    ds, _patients, timing = build_month(records, period, s)
    if ds.counts()["IDS101Referral"] == 0:
        raise EmptyMonth(f"{period.key} {kind.value}: the records source has no referral open in the month; nothing "
                         "was built (NHS England rejects an empty file). Check the records connection and that the "
                         "month's records are loaded, then re-run")
    run_key = period.key if kind == Kind.PRIMARY else f"{period.key}-{kind.value}"
    t0 = time.perf_counter()
    res = rules.screen(ds)
    # removed records, and the blanked cells (same table, with the rule and a 'blanked <column>' reason: issue 12)
    quarantine(state, FLOW, run_key, res.quarantined + res.blanked_items)
    t1 = time.perf_counter()
    if res.file_failures:
        raise RuntimeError(f"data set for {period.key} ({kind.value}) would be rejected: "
                           f"{', '.join(res.file_failures)}")
    written = writer.write(ds, out, s.key, name=s.archive_name(period, kind),
                           extra={"quarantined": len(res.quarantined), "rules_implemented": len(rules.REGISTRY),
                                  "submission": kind.value})
    t2 = time.perf_counter()
    stmt = policy.statement(period.key, mandated_counts=ds.counts(), pre2020=timing["pre2020"],
                            ndop_in_mandated=None, planning=None, ndop_source="pending")
    _private_write(_statement_path(s, period, kind), json.dumps(stmt, indent=1, default=str))
    write_quarantine(out, res.quarantined, res.blanked_items)
    figures = facts(ds, res.failures, res.quarantined, blanked=res.blanked_by_rule)
    state_tables.register(state, period.key, kind=kind, version=s.version, archive_path=str(written.path),
                          sha256=written.sha256, size_bytes=written.size, row_counts=ds.counts(),
                          quarantined=len(res.quarantined), window_closes=window.closes if window else None,
                          facts=figures)
    render_report(state, period, s, kind, window=window)
    return {**base, "state": "written", "rows": ds.counts(), "quarantined": len(res.quarantined),
            "quarantined_by_rule": res.by_reason, "blanked_by_rule": res.blanked_by_rule,
            "warnings": {c: n for c, n in res.failures.items()
                         if rules.CATALOGUE.get(c, ("",))[0] == rules.WARNING},
            "archive_bytes": written.size, "timing_s": {**{k: v for k, v in timing.items() if k != "pre2020"},
                                                        "validate_s": round(t1 - t0, 3),
                                                        "write_s": round(t2 - t1, 3)},
            "pre2020": timing["pre2020"], "rebuilt": True, "confirmed": False}


def load_month(state: Engine, period: Period, s: Settings, kind: Kind | str = Kind.PRIMARY,
               tables: Collection[str] | None = None) -> dict[str, pd.DataFrame]:
    """The written submission read back from its archive (every table, or only ``tables``; always ``manifest``)."""
    row = state_tables.get(state, period.key, kind)
    if row is None:
        raise RuntimeError(f"no data set written for {period.key} ({Kind(kind).value})")
    # the archive is in its version's national names (v2.0: SourceOfReferralMH ...); the code reading it back (the
    # planning extract, the opt-out counts) reads the builder's, which are v2.1's
    return to_builder_names(read_archive(Path(row["archive_path"]), s.key, tables), str(row["version"]))


def mpi_numbers(state: Engine, period: Period, s: Settings, kind: Kind | str = Kind.PRIMARY) -> list[str]:
    """Valid NHS numbers in the submission's MPI (the archive was screened, so all present ones are valid)."""
    mpi = load_month(state, period, s, kind, tables=("IDS001MPI",))["IDS001MPI"]
    return sorted(mpi["NHSNumber"].dropna().astype(str).unique().tolist())


def ndop_request_id(period: Period) -> str:
    return f"{FLOW}-{period.key}"


def record_optouts(state: Engine, period: Period, s: Settings, kind: Kind | str, opted_out: set[str],
                   ndop_source: str, *, planning: dict[str, Any] | None = None, window: Window | None = None,
                   tables: dict[str, pd.DataFrame] | None = None) -> int:
    """Write the submission's opt-out statement with the real figures and re-render its report.

    Returns how many patients with a national data opt-out the mandated submission keeps (required by law).
    """
    kind = Kind(kind)
    tables = tables if tables is not None else load_month(state, period, s, kind, tables=("IDS001MPI",))
    in_mandated = int(tables["IDS001MPI"]["NHSNumber"].isin(list(opted_out)).sum())
    path = _statement_path(s, period, kind)
    old = json.loads(path.read_text()) if path.exists() else {}
    pre: dict[str, Any] = next((r["counts"] for r in old.get("rules", []) if r["rule"] == "pre2020_dataset_objection"),
                               {})
    if planning is None:   # keep what an earlier check said about the extract
        planning = next(({**r["counts"], **u["counts"]} for r in old.get("rules", []) if r["rule"] == "ndop_applied"
                         for u in old.get("rules", []) if u["rule"] == "ndop_status_unknown_excluded"), None)
    manifest = cast(dict[str, Any], tables["manifest"])      # read_archive puts the manifest (a dict) beside the frames
    written = {name: int(t["rows"]) for name, t in manifest["tables"].items()}   # every table's rows, as written
    stmt = policy.statement(period.key, mandated_counts=written,
                            pre2020=pre, ndop_in_mandated=in_mandated, planning=planning, ndop_source=ndop_source)
    _private_write(path, json.dumps(stmt, indent=1, default=str))
    render_report(state, period, s, kind, window=window)
    return in_mandated


@dataclass(frozen=True)
class PlanningExtract:
    """The encrypted commissioner extract and the ``ndop_applied`` evidence minted for exactly those bytes."""

    payload: bytes
    ndop_applied: Evidence


def planning_extract(state: Engine, period: Period, s: Settings, opted_out: set[str], checked: set[str],
                     ndop_source: str, *, window: Window | None = None) -> tuple[PlanningExtract, dict[str, Any]]:
    """The commissioner extract of the primary submission after the national data opt-out, encrypted; writes the
    opt-out statement and re-renders the report with the real figures. The extract carries ``ndop_applied``
    evidence, minted here where :func:`caldicott.policy.dataset.apply_ndop` produced its rows."""
    tables = load_month(state, period, s, tables=policy.PLANNING_TABLES)
    ds = Dataset(period, s.version, {k: v for k, v in tables.items() if k != "manifest"})
    extract = policy.planning_extract(ds, org_provider=s.org_provider)
    kept, counts = policy.apply_ndop(extract, opted_out, checked)
    buf = io.StringIO()
    kept.to_csv(buf, index=False)
    blob = encrypt(buf.getvalue().encode(), s.key)
    _private_write(s.month_dir(period) / f"commissioner_extract_{period.key}.csv.enc", blob)
    in_mandated = record_optouts(state, period, s, Kind.PRIMARY, opted_out, ndop_source, planning=counts,
                                 window=window, tables=tables)
    return (PlanningExtract(blob, establish("ndop_applied", blob)),
            {"planning": counts, "ndop_patients_kept_in_submission": in_mandated})


def stage_extract(state: Engine, period: Period, s: Settings, extract: PlanningExtract,
                  sender: Sender) -> dict[str, Any]:
    """Stage the commissioner extract (national data opt-out applied, with its evidence) through the gateway."""
    from caldicott.gateway import release

    iid = item_id(FLOW, period.key, "commissioner_extract")
    Ledger(state).record_intent([Intent(iid, FLOW, Purpose.PLANNING_EXTRACT.value, period.key, s.commissioner,
                                        sender.channel, batch_id=period.key)])
    item = Outbound(iid, Purpose.PLANNING_EXTRACT, s.commissioner, sender.channel, extract.payload,
                    Protection.STAGED_ENCRYPTED, address=f"{period.key}/commissioner",
                    headers={"filename": f"commissioner_extract_{period.key}.csv.enc"},
                    facts={"ndop_applied": extract.ndop_applied})
    return {"item_id": iid, **release([item], sender, state).counts()}


def check_reference(reference: str | None) -> str:
    ref = (reference or "").strip()
    if not (3 <= len(ref) <= 100) or not ref.replace("-", "").replace("_", "").replace("/", "").isalnum():
        raise ValueError("submission reference must be 3-100 letters, digits, '-', '_' or '/'")
    return ref


def confirm(state: Engine, period: Period, reference: str, by: str | None,
            kind: Kind | str = Kind.PRIMARY) -> dict[str, Any]:
    """Record the SDCS portal reference the submitter entered (opaque portal id, no patient data), once.

    The same reference again changes nothing; another one raises
    :class:`~caldicott.dataset.state_tables.ConfirmationConflict` (the first confirmation stands).
    """
    kind = Kind(kind)
    ref = check_reference(reference)
    before = state_tables.get(state, period.key, kind)
    already = bool(before and before["submission_reference"])
    row = state_tables.mark_submitted(state, period.key, ref, by, kind)
    Ledger(state).mark_acked(submission_item_id(period, kind), detail="submitted via SDCS portal")
    return {"run_key": period.key, "kind": kind.value, "state": state_tables.SUBMITTED, "reference": ref,
            "already_confirmed": already,
            "confirmed_at": row["submitted_at"].replace(tzinfo=dt.UTC).isoformat(timespec="seconds")}
