"""Plan and deliver one run of referrer updates, contract by contract (flow ``referrer_updates``).

:func:`plan_interval` reads the interval's sessions once, quarantines bad records (unknown referrer,
contact before referral, unusable NHS number) and returns the active contracts' ids.
:func:`deliver_contract` builds the files one contract is entitled to — the day's session file and,
when the run closes a month (or one is asked for), the month's activity file — records ledger intents,
and releases them through the gateway with the contract's sender. Items that cannot be sent (no
transport for the channel yet, unusable certificate, unsupported format) are *held* in the ledger with
the reason, so a person sees them. Transport failures raise :class:`ContractDeliveryError`, whose
message names the contract and the transport error only, never a patient.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from sqlalchemy import Engine, select

from caldicott.crypto import cms
from caldicott.crypto.keys import CertificateError
from caldicott.gateway import release
from caldicott.policy import adequacy
from caldicott.policy.evidence import establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.policy.referrer_updates import (
    ACTIVITY_COLUMN_SET,
    COLUMN_SET,
    FHIR_FORMAT,
    FLOW,
    SUPPORTED_FORMATS,
    ContractOptions,
    rules_applied,
)
from caldicott.records import schema
from caldicott.records.queries import read
from caldicott.state.quarantine import quarantine
from caldicott.transport.base import Outbound, Sender, TransportError
from caldicott.transport.ledger import DONE, Intent, Ledger, item_id
from caldicott.transport.mesh_journal import MeshJournal
from caldicott.updates import build, free_text
from caldicott.updates.fhir import NamespaceNotConfigured

#: One row of the source's ``contract`` table, by column name.
Contract = dict[str, Any]

#: Returns the sender for a contract, or None when its transport is not available in this deployment.
SenderFactory = Callable[[ContractOptions, Contract], Sender | None]

PROTECTION = {"sftp": Protection.SFTP, "mesh": Protection.MESH}


class IntervalPlan(TypedDict):
    """What :func:`plan_interval` returns (the ``plan`` task logs it and returns ``contract_ids`` to XCom)."""

    run_key: str
    contract_ids: list[str]
    sessions: int
    quarantined: int
    by_reason: dict[str, int]       # reason code -> records quarantined


class ContractSummary(TypedDict):
    """One contract's result, as the ``deliver`` task returns it to XCom (:meth:`ContractResult.as_dict`)."""

    contract_id: str
    files: dict[str, str]           # kind -> sent / already_sent / held / failed / not_sent
    rows: dict[str, int]            # kind -> data rows in the file
    quarantined: int
    held: dict[str, str]            # kind -> why it is held (no patient data)
    rules: list[str]
    text_cleaned: dict[str, int]    # characters removed from free text, by kind


class UpdatesSummary(TypedDict):
    """Totals over contracts' results (:func:`summarise`)."""

    contracts: int
    files: dict[str, int]           # status -> files
    rows: dict[str, int]            # kind -> data rows
    quarantined: int                # records quarantined by the contracts' tasks
    held: list[str]                 # "contract:kind"
    text_cleaned: dict[str, int]


class UpdatesReport(TypedDict):
    """What the ``report`` task returns to XCom (:func:`report`): the totals, the run's quarantine by reason, and
    the contracts that were planned but returned no result."""

    contracts: int
    files: dict[str, int]
    rows: dict[str, int]
    quarantined: dict[str, int]     # reason code -> records, for the whole run
    held: list[str]
    text_cleaned: dict[str, int]
    not_delivered: list[str]        # contract ids


class ContractDeliveryError(RuntimeError):
    """Some of a contract's files did not arrive. Names the contract only; ``retryable`` as the transport said."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class ContractResult:
    """What one contract's task did: ids and counts only (goes to XCom)."""

    contract_id: str
    files: dict[str, str] = field(default_factory=dict)     # kind -> sent / already_sent / held / failed
    rows: dict[str, int] = field(default_factory=dict)      # kind -> data rows in the file
    quarantined: int = 0
    held_reasons: dict[str, str] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    text_cleaned: dict[str, int] = field(default_factory=dict)   # characters removed from free text, by kind

    def as_dict(self) -> ContractSummary:
        return {"contract_id": self.contract_id, "files": self.files, "rows": self.rows,
                "quarantined": self.quarantined, "held": self.held_reasons, "rules": self.rules,
                "text_cleaned": self.text_cleaned}


def period_key(first: dt.date, end: dt.date) -> str:
    """``2026-10-14`` for one day, ``2026-10`` for a month, ``a..b`` otherwise (as the Airflow run key)."""
    if (end - first).days == 1:
        return first.isoformat()
    if first.day == 1 and build.month_bounds(first)[1] == end:
        return first.strftime("%Y-%m")
    return f"{first.isoformat()}..{end.isoformat()}"


def file_name(contract_id: str, kind: str, period: str, *, encrypted: bool, file_format: str = COLUMN_SET) -> str:
    """Deterministic per (contract, kind, period): a re-run writes the same name, never a second file.

    ``<contract>_<kind>_<period>_<format>.csv`` or ``.json`` (``fhir-r4-v1``), plus ``.p7m`` when encrypted.
    Activity files are always CSV and keep their ``csv-v1`` name whatever the session format.
    """
    extension = ".json" if file_format == FHIR_FORMAT else ".csv"
    return f"{contract_id}_{kind}_{period}_{file_format}{extension}" + (cms.SUFFIX if encrypted else "")


def plan_interval(records: Engine, state: Engine, first: dt.date, end: dt.date, run_key: str) -> IntervalPlan:
    """Quarantine the interval's bad records; return the active contracts' ids and counts."""
    start_utc, end_utc = build.london_bounds(first, end)
    sessions = build.load_sessions(records, start_utc, end_utc)
    _, bad = build.screen(sessions, build.known_organisations(records))
    quarantine(state, FLOW, run_key, bad)
    contracts = build.active_contracts(records)
    by_reason: dict[str, int] = {}
    for q in bad:
        by_reason[q.reason_code] = by_reason.get(q.reason_code, 0) + 1
    return {"run_key": run_key, "contract_ids": contracts["contract_id"].astype(str).tolist(),
            "sessions": len(sessions), "quarantined": len(bad), "by_reason": by_reason}


def load_contract(records: Engine, contract_id: str) -> Contract:
    t = schema.contract
    df = read(records, select(t).where(t.c.contract_id == contract_id))
    if df.empty:
        raise ContractDeliveryError(f"contract {contract_id}: not found in the records source", retryable=False)
    return {str(k): v for k, v in df.iloc[0].to_dict().items()}


def _package(options: ContractOptions, contract: Contract, kind: str, period: str, data: bytes,
             held: dict[str, str], country: str, *, minimised: bool) -> Outbound:
    """One file as the gateway's item. ``minimised``: ``data`` is the file the builder made from the contract's
    field list (:mod:`caldicott.updates.build`), so ``contract_fields_applied`` evidence is minted for the bytes
    that leave (the file, or its CMS envelope made here); a placeholder held for a person gets none."""
    iid = item_id(FLOW, options.contract_id, kind, period)
    payload, protection, encrypted = data, PROTECTION.get(options.transport, Protection.NONE), False
    if options.encrypt:
        try:
            payload, protection, encrypted = cms.encrypt_file(data, contract["certificate_pem"]), Protection.CMS, True
        except CertificateError as exc:
            held[iid] = f"referrer certificate unusable: {exc}"
    fmt = options.file_format if kind == "sessions" and options.file_format in SUPPORTED_FORMATS else COLUMN_SET
    headers = {"filename": file_name(options.contract_id, kind, period, encrypted=encrypted, file_format=fmt),
               "column_set": fmt if kind == "sessions" else ACTIVITY_COLUMN_SET, "kind": kind}
    headers["content_type"] = ("application/pkcs7-mime" if encrypted else
                               "application/fhir+json" if fmt == FHIR_FORMAT else "text/csv")
    # where the referrer processes data (organisation.country): the release gateway refuses a country not on the
    # adequacy list, and a blank one (the referrer unknown or its country not stated), holding the file with the rule
    headers[adequacy.COUNTRY_HEADER] = country
    if options.transport == "mesh":  # the names caldicott.transport.mesh.MeshSender reads
        headers["workflow_id"] = str(contract.get("mesh_workflow") or "")
    address = str(contract.get("remote_path") or "") if options.transport == "sftp" else str(
        contract.get("mesh_mailbox") or "")
    facts = {"contract_fields_applied": establish("contract_fields_applied", payload)} if minimised else {}
    return Outbound(item_id=iid, purpose=Purpose.REFERRER_UPDATE, recipient=options.contract_id,
                    channel=options.transport, payload=payload, protection=protection, address=address,
                    headers=headers, facts=facts)


def build_items(records: Engine, state: Engine, contract: Contract, first: dt.date, end: dt.date, run_key: str,
                *, activity_month: dt.date | None = None, known_orgs: set[str] | None = None,
                ) -> tuple[list[Outbound], ContractResult, dict[str, str], dict[str, str]]:
    """Build (not send) a contract's files for the run. Returns items, the result so far, holds and runs keys."""
    options = build.contract_options(contract)
    result = ContractResult(options.contract_id, rules=rules_applied(options))
    held: dict[str, str] = {}
    item_runs: dict[str, str] = {}
    items: list[Outbound] = []
    orgs = known_orgs if known_orgs is not None else build.known_organisations(records)
    start_utc, end_utc = build.london_bounds(first, end)
    rows, bad = build.screen(build.load_sessions(records, start_utc, end_utc, options.referrer_ods), orgs)
    result.quarantined += quarantine(state, FLOW, run_key, bad)
    if options.include_summaries:   # the only free text that leaves: cleaned, and reported as counts
        rows, result.text_cleaned = free_text.clean(rows)
    period = period_key(first, end)
    country = build.organisation_country(records, options.referrer_ods)
    minimised = False
    try:
        data, minimised = build.sessions_file(options, rows, period), True
    except NamespaceNotConfigured as exc:  # fail closed: hold it, saying what to configure
        data = b"-"
        held[item_id(FLOW, options.contract_id, "sessions", period)] = str(exc)
    except ValueError:  # unsupported format: hold an empty placeholder so a person sees it
        data = b"-"
        held[item_id(FLOW, options.contract_id, "sessions", period)] = (
            f"file format {options.file_format!r} not supported")
    item = _package(options, contract, "sessions", period, data, held, country, minimised=minimised)
    items.append(item)
    item_runs[item.item_id] = run_key
    result.rows["sessions"] = len(rows)
    if activity_month is not None and options.include_activity:
        m_first, m_end = build.month_bounds(activity_month)
        m_start_utc, m_end_utc = build.london_bounds(m_first, m_end)
        m_rows, m_bad = build.screen(build.load_sessions(records, m_start_utc, m_end_utc, options.referrer_ods), orgs)
        result.quarantined += quarantine(state, FLOW, run_key, m_bad)
        month = m_first.strftime("%Y-%m")
        item = _package(options, contract, "activity", month, build.activity_csv(options, month, m_rows), held,
                        country, minimised=True)
        items.append(item)
        item_runs[item.item_id] = month
        result.rows["activity"] = int(m_rows["service_request_id"].nunique()) if len(m_rows) else 0
    return items, result, held, item_runs


def deliver_contract(records: Engine, state: Engine, contract_id: str, first: dt.date, end: dt.date,
                     run_key: str, sender_factory: SenderFactory, *, activity_month: dt.date | None = None,
                     known_orgs: set[str] | None = None, contract: Contract | None = None) -> ContractResult:
    """Build, plan and release one contract's files for ``[first, end)``; idempotent per interval."""
    contract = contract if contract is not None else load_contract(records, contract_id)
    options = build.contract_options(contract)
    ledger = Ledger(state)
    planned = {"sessions": item_id(FLOW, options.contract_id, "sessions", period_key(first, end))}
    if activity_month is not None and options.include_activity:
        planned["activity"] = item_id(FLOW, options.contract_id, "activity", activity_month.strftime("%Y-%m"))
    known = ledger.entries(list(planned.values()))
    if all(i in known and known[i].state in DONE for i in planned.values()):
        # a re-run of a delivered interval: nothing to build, nothing to send
        return ContractResult(options.contract_id, files=dict.fromkeys(planned, "already_sent"),
                              rules=rules_applied(options))
    items, result, held, item_runs = build_items(records, state, contract, first, end, run_key,
                                                 activity_month=activity_month, known_orgs=known_orgs)
    ledger.record_intent(Intent(i.item_id, FLOW, Purpose.REFERRER_UPDATE.value, item_runs[i.item_id],
                                options.contract_id, options.transport, batch_id=options.contract_id)
                         for i in items)
    sender = None if len(held) == len(items) else _sender(sender_factory, options, contract)
    if sender is not None and hasattr(sender, "use_journal"):
        sender.use_journal(MeshJournal(state))   # MESH message ids, for crash recovery by tracking
    if sender is None:
        for i in items:
            held.setdefault(i.item_id, f"not delivered: transport not available ({options.transport})")
    entries = ledger.entries([i.item_id for i in items])
    sendable: list[Outbound] = []
    for i in items:
        kind = i.headers["kind"]
        entry = entries.get(i.item_id)
        if entry is not None and entry.state in DONE:
            result.files[kind] = "already_sent"
        elif i.item_id in held:
            ledger.hold(i.item_id, held[i.item_id])
            result.files[kind] = "held"
            result.held_reasons[kind] = held[i.item_id]
        else:
            sendable.append(i)
    if sendable and sender is not None:     # without a sender every item was held above
        try:
            report = release(sendable, sender, state)
        finally:
            close = getattr(sender, "close", None)
            if close is not None:
                close()
        errors: list[str] = []
        for i in sendable:
            kind = i.headers["kind"]
            if i.item_id in report.sent:
                result.files[kind] = "sent"
            elif i.item_id in report.already_sent:
                result.files[kind] = "already_sent"
            elif i.item_id in report.failed:
                result.files[kind] = "failed"
                errors.append(report.failed[i.item_id])
            elif i.item_id in report.refused:
                result.files[kind] = "held"
                result.held_reasons[kind] = report.refused[i.item_id]
            else:
                result.files[kind] = "not_sent"
        if errors:
            # a changed host key (or any error the transport calls final) is not retried: retrying cannot help
            raise ContractDeliveryError(
                f"contract {options.contract_id}: {len(errors)} file(s) not delivered: {errors[0]}",
                retryable=not report.final)
    return result


def _sender(factory: SenderFactory, options: ContractOptions, contract: Contract) -> Sender | None:
    """The contract's sender; a configuration problem becomes a ContractDeliveryError naming the contract."""
    try:
        return factory(options, contract)
    except TransportError as exc:
        raise ContractDeliveryError(f"contract {options.contract_id}: {exc}", retryable=exc.retryable) from None
    except Exception as exc:  # e.g. the connection is not defined (or the secrets backend is down)
        raise ContractDeliveryError(
            f"contract {options.contract_id}: transport not configured ({type(exc).__name__})") from None


def summarise(results: Sequence[ContractSummary]) -> UpdatesSummary:
    """Totals over contracts' results (ids and counts only)."""
    files: dict[str, int] = {}
    rows: dict[str, int] = {}
    cleaned: dict[str, int] = {}
    held: list[str] = []
    for r in results:
        for kind, n in (r.get("text_cleaned") or {}).items():
            cleaned[kind] = cleaned.get(kind, 0) + int(n)
        for kind, status in r.get("files", {}).items():
            files[status] = files.get(status, 0) + 1
            if status == "held":
                held.append(f"{r['contract_id']}:{kind}")
        for kind, n in r.get("rows", {}).items():
            rows[kind] = rows.get(kind, 0) + int(n)
    return {"contracts": len(results), "files": files, "rows": rows,
            "quarantined": sum(int(r.get("quarantined", 0)) for r in results), "held": sorted(held),
            "text_cleaned": cleaned}


def report(results: Sequence[ContractSummary], quarantined: Mapping[str, int],
           planned: Iterable[str]) -> UpdatesReport:
    """The run's report: :func:`summarise` of the contracts' results, the run's quarantine counts by reason
    (``counts_by_reason``, which covers the planning step too) and the planned contracts with no result."""
    s = summarise(results)
    done = {r["contract_id"] for r in results}
    return {"contracts": s["contracts"], "files": s["files"], "rows": s["rows"], "quarantined": dict(quarantined),
            "held": s["held"], "text_cleaned": s["text_cleaned"], "not_delivered": sorted(c for c in planned
                                                                                        if c not in done)}


__all__ = ["Contract", "ContractDeliveryError", "ContractResult", "ContractSummary", "IntervalPlan", "UpdatesReport",
           "UpdatesSummary", "deliver_contract", "file_name", "period_key", "plan_interval", "report", "summarise"]
