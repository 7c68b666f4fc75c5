"""Which route a submission takes, and sending it by that route exactly once (no Airflow import).

A submission is a reporting period in one of its two kinds (:class:`caldicott.dataset.calendar.Kind`): the
**primary** in the window after the month, the **refresh** in the next one. Each is its own ledger item, archive
and reference, so the refresh goes even though the primary went, and neither goes twice. A submission whose
window has closed before it left is not sent at all: :class:`WindowMissed` names the period and kind (NHS England
takes nothing into a closed window; the run must fail and say so).

NHS England's SDCS Cloud portal has no public upload API, so the default route (``staged``) stages the encrypted
archive for the named submitter, who uploads it by hand and enters the portal's reference at a human step. A
service that submits through an intermediary (a commissioning support unit, a system supplier) can instead send
the same encrypted archive there automatically:

* ``mesh`` — one MESH message to the intermediary's mailbox with the agreed workflow id
  (:class:`caldicott.transport.mesh.MeshSender`); the reference recorded is the MESH message id;
* ``sftp`` — an atomic, checksum-verified upload to the intermediary's server with a pinned host key
  (:class:`caldicott.transport.sftp.SftpSender`); the reference recorded is the remote path.

Whatever the route, the archive goes through the release gateway (purpose ``mandated_dataset``, fact
``validated``, protection ``staged-encrypted`` / ``mesh`` / ``sftp``) as the SAME ledger item
(:func:`submission_item_id`: ``item_id("monthly_dataset", month, "submission")`` for the primary, with ``"refresh"``
appended for the refresh), so a submission leaves once, by one route:

* a re-run finds the item ``sent`` and sends nothing, by whichever route is asked for this time, and reports
  the route that actually carried it (the ledger's channel);
* a month whose earlier attempt by another route is unfinished (``intended``, ``sending`` or ``failed``) is
  refused with :class:`RouteConflict`: the other route may already have delivered it, and only that route's
  transport can be asked (MESH tracking by local id, SFTP / staging by checksum). Re-run with the route the
  ledger names.

With an automatic route there is nothing for a person to confirm: :func:`record_automatic` writes the
transport's reference into ``dataset_submission`` (state ``submitted``). The ledger item stays ``sent``: the
intermediary's own receipt is outside Caldicott, so ``acked`` is not claimed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from caldicott.dataset import state_tables
from caldicott.dataset.builder import Period
from caldicott.dataset.calendar import Kind, Window
from caldicott.policy.evidence import checksum, establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import DONE, Intent, Ledger, item_id

FLOW = "monthly_dataset"
REFERENCE_MAX = 100  # dataset_submission.submission_reference


class Route(StrEnum):
    """How the month's archive reaches NHS England."""

    STAGED = "staged"   # for the named submitter to upload through the SDCS Cloud portal (human step)
    MESH = "mesh"       # to an intermediary's MESH mailbox (automatic)
    SFTP = "sftp"       # to an intermediary's SFTP server (automatic)


#: the ledger's channel for each route (what the senders call themselves)
CHANNEL = {Route.STAGED: "staging", Route.MESH: "mesh", Route.SFTP: "sftp"}
ROUTE_OF_CHANNEL = {v: k for k, v in CHANNEL.items()}
PROTECTION = {Route.STAGED: Protection.STAGED_ENCRYPTED, Route.MESH: Protection.MESH, Route.SFTP: Protection.SFTP}

#: the run parameter's values: ``configured`` takes the route from the deployment's configuration
REQUESTABLE = ("configured", *(r.value for r in Route))


class SubmissionConfigError(ValueError):
    """The submission route is asked for but not (or wrongly) configured. Not transient: do not retry."""


class RouteConflict(RuntimeError):
    """An earlier, unfinished attempt used another route; sending by this one could deliver the month twice."""


class WindowMissed(RuntimeError):
    """The submission window closed before this submission left (or was confirmed). Not transient."""

    def __init__(self, period: str, kind: Kind | str, window: Window, what: str = "before it left") -> None:
        self.period, self.kind, self.window = period, Kind(kind), window
        super().__init__(f"the {period} {Kind(kind).value} submission missed its window: the window closed on "
                         f"{window.closes.isoformat()} (end of day, London) {what}; NHS England takes it no more")


@dataclass(frozen=True)
class SubmissionTarget:
    """Where the month goes. Opaque configuration only (mailbox ids, connection ids, a directory)."""

    route: Route
    recipient: str = ""          # opaque id in the ledger: the submitter (staged) or the intermediary
    mesh_mailbox: str = ""
    mesh_workflow: str = ""
    mesh_conn_id: str = ""       # Airflow connection of Caldicott's own mailbox ("" = the default)
    sftp_conn_id: str = ""
    sftp_directory: str = "."

    @property
    def automatic(self) -> bool:
        return self.route != Route.STAGED

    @property
    def channel(self) -> str:
        return CHANNEL[self.route]

    def describe(self) -> str:
        """A short, patient-free label for logs, XCom and ``submitted_by``."""
        if self.route == Route.MESH:
            return f"mesh {self.mesh_mailbox} ({self.mesh_workflow})"
        if self.route == Route.SFTP:
            return f"sftp {self.sftp_conn_id}:{self.sftp_directory}"
        return f"staged for {self.recipient}"


def resolve_target(requested: str | None, config: Mapping[str, Any] | None, *, submitter: str) -> SubmissionTarget:
    """The route for this run: the run's ``submission_route`` parameter over the deployment's configuration.

    ``requested``: ``configured`` (or empty) takes ``config["route"]``, or ``staged`` when nothing is configured;
    ``staged`` always stages (e.g. while the intermediary is unavailable); ``mesh`` / ``sftp`` need their details
    in ``config``. ``config`` is the JSON of the Airflow Variable ``caldicott_dataset_submission``, e.g.
    ``{"route": "mesh", "mesh_mailbox": "X26ABC3", "mesh_workflow": "IAPT_V2_SUBMISSION"}``.
    """
    cfg = dict(config or {})
    unknown = set(cfg) - {"route", "recipient", "mesh_mailbox", "mesh_workflow", "mesh_conn_id", "sftp_conn_id",
                          "sftp_directory"}
    if unknown:
        raise SubmissionConfigError(f"unknown submission configuration keys: {', '.join(sorted(unknown))}")
    asked = (requested or "configured").strip().lower()
    if asked not in REQUESTABLE:
        raise SubmissionConfigError(f"submission_route must be one of {', '.join(REQUESTABLE)}")
    if asked == "configured":
        asked = str(cfg.get("route") or Route.STAGED.value).strip().lower()
        if asked not in {r.value for r in Route}:
            raise SubmissionConfigError(f"configured route must be one of {', '.join(r.value for r in Route)}")
    route = Route(asked)
    if route == Route.STAGED:
        return SubmissionTarget(Route.STAGED, recipient=submitter)
    if route == Route.MESH:
        mailbox, workflow = str(cfg.get("mesh_mailbox") or "").strip(), str(cfg.get("mesh_workflow") or "").strip()
        if not mailbox or not workflow:
            raise SubmissionConfigError("route mesh needs mesh_mailbox and mesh_workflow in the configuration")
        return SubmissionTarget(Route.MESH, recipient=str(cfg.get("recipient") or mailbox), mesh_mailbox=mailbox,
                                mesh_workflow=workflow, mesh_conn_id=str(cfg.get("mesh_conn_id") or ""))
    conn_id = str(cfg.get("sftp_conn_id") or "").strip()
    if not conn_id:
        raise SubmissionConfigError("route sftp needs sftp_conn_id in the configuration")
    directory = str(cfg.get("sftp_directory") or ".").strip() or "."
    if ".." in directory.split("/"):
        raise SubmissionConfigError("sftp_directory must not contain '..'")
    return SubmissionTarget(Route.SFTP, recipient=str(cfg.get("recipient") or conn_id), sftp_conn_id=conn_id,
                            sftp_directory=directory)


def submission_item_id(period: Period, kind: Kind | str = Kind.PRIMARY) -> str:
    """The one ledger item of a submission (period and kind), whatever the route.

    The primary's id is the one every earlier version used for "the month", so what already left is recognised.
    """
    if Kind(kind) == Kind.PRIMARY:
        return item_id(FLOW, period.key, "submission")
    return item_id(FLOW, period.key, "submission", Kind(kind).value)


def _outbound(target: SubmissionTarget, iid: str, period: Period, path: Path, row: Mapping[str, Any],
              kind: Kind | str = Kind.PRIMARY) -> Outbound:
    """The submission as the gateway sees it. Its ``validated`` evidence is minted here, not asserted: only when the
    bytes about to leave are exactly the archive the pipeline registered (by SHA-256) after NHS England's file-level
    rules passed — a file swapped or altered on disk since carries none and is refused by the gateway."""
    version = str(row["version"])
    payload = path.read_bytes()
    facts = {"validated": establish("validated", payload)} if checksum(payload) == row["sha256"] else {}
    headers = {"filename": path.name}
    address = period.key                       # staging: a folder per month (the refresh's file is named so)
    if target.route == Route.MESH:
        address = target.mesh_mailbox
        headers.update(workflow_id=target.mesh_workflow, content_type="application/octet-stream",
                       subject=f"IAPT v{version} {period.key} {Kind(kind).value}")
    elif target.route == Route.SFTP:
        address = target.sftp_directory
    return Outbound(iid, Purpose.MANDATED_DATASET, target.recipient, target.channel, payload,
                    PROTECTION[target.route], address=address, headers=headers, facts=facts)


def _reference(ref: str | None) -> str:
    ref = (ref or "").strip()
    return ref if len(ref) <= REFERENCE_MAX else ref[-REFERENCE_MAX:]


def submit(state: Engine, period: Period, target: SubmissionTarget, sender: Sender,
           kind: Kind | str = Kind.PRIMARY, *, window: Window | None = None,
           now: dt.datetime | None = None) -> dict[str, Any]:
    """Send (or stage) one submission's encrypted archive by ``target``'s route through the release gateway, once.

    Returns ids and counts for XCom: ``route`` is the route that carried it (the ledger's, on a re-run),
    ``automatic`` whether a person still has to upload it, ``reference`` the transport's reference (MESH message
    id, remote path, staged path), ``confirmed`` / ``submission_reference`` whether it is already confirmed and by
    what. Raises :class:`RouteConflict` (see the module docstring) and, when ``window`` has closed and the
    submission has not left, :class:`WindowMissed` (nothing is sent; the register says ``missed``).
    """
    from caldicott.gateway import release

    kind = Kind(kind)
    row = state_tables.get(state, period.key, kind)
    if row is None:
        raise RuntimeError(f"no data set written for {period.key} ({kind.value})")
    if sender.channel != target.channel:
        raise ValueError(f"sender channel {sender.channel} does not match route {target.route}")
    iid = submission_item_id(period, kind)
    ledger = Ledger(state)
    entry = ledger.get(iid)
    if entry is not None and entry.state in DONE:  # left already (by whichever route): not even read again
        state_tables.mark_staged(state, period.key, iid, kind)
        return _result(state, period, kind, iid, entry.channel, entry.transport_ref, target, {"already_sent": 1})
    if window is not None and window.is_closed(now or dt.datetime.now(dt.UTC)):
        state_tables.mark_missed(state, period.key, kind)
        raise WindowMissed(period.key, kind, window)
    if entry is not None and entry.channel != target.channel:
        raise RouteConflict(
            f"the {period.key} {kind.value} submission was attempted via {entry.channel} (ledger state "
            f"{entry.state}); re-run with submission_route={ROUTE_OF_CHANNEL.get(entry.channel, entry.channel)} so "
            "that transport is asked whether it arrived")
    ledger.record_intent([Intent(iid, FLOW, Purpose.MANDATED_DATASET.value, period.key, target.recipient,
                                 target.channel, batch_id=period.key)])
    path = Path(row["archive_path"])
    report = release([_outbound(target, iid, period, path, row, kind)], sender, state)
    counts = report.counts()
    after = ledger.get(iid)
    if report.sent or report.already_sent:
        state_tables.mark_staged(state, period.key, iid, kind)
    ref = after.transport_ref if after is not None and after.state in DONE else None
    return _result(state, period, kind, iid, target.channel, ref, target, counts)


def _result(state: Engine, period: Period, kind: Kind, iid: str, channel: str, ref: str | None,
            target: SubmissionTarget, counts: Mapping[str, int]) -> dict[str, Any]:
    route = ROUTE_OF_CHANNEL.get(channel, Route.STAGED)
    full = {"sent": 0, "already_sent": 0, "refused": 0, "failed": 0, "not_planned": 0, **counts}
    row = state_tables.get(state, period.key, kind) or {}
    confirmed = row.get("state") == state_tables.SUBMITTED and bool(row.get("submission_reference"))
    return {"run_key": period.key, "kind": kind.value, "item_id": iid, "route": route.value,
            "requested_route": target.route.value, "automatic": route != Route.STAGED,
            "reference": _reference(ref) if ref else None,
            "via": target.describe() if channel == target.channel else channel,
            "confirmed": confirmed, "submission_reference": row.get("submission_reference") if confirmed else None,
            **full}


def record_automatic(state: Engine, period: Period, result: Mapping[str, Any],
                     kind: Kind | str | None = None) -> dict[str, Any]:
    """Record an automatically sent submission as submitted, with the transport's reference (idempotent; a
    different reference for one already confirmed raises :class:`~caldicott.dataset.state_tables.ConfirmationConflict`).
    """
    kind = Kind(kind or result.get("kind") or Kind.PRIMARY)
    if not result.get("automatic"):
        raise ValueError("record_automatic is for the mesh and sftp routes; the staged route is confirmed by a person")
    ref = _reference(result.get("reference"))
    if not ref:
        raise RuntimeError(f"the {period.key} {kind.value} submission has no transport reference; it was not sent")
    entry = Ledger(state).get(str(result["item_id"]))
    if entry is None or entry.state not in DONE:
        raise RuntimeError(f"the {period.key} {kind.value} submission is not sent "
                           f"(ledger: {entry.state if entry else 'none'})")
    if state_tables.get(state, period.key, kind) is None:
        raise RuntimeError(f"no data set written for {period.key} ({kind.value})")
    row = state_tables.mark_submitted(state, period.key, ref,
                                      f"automatic: {result.get('via') or result['route']}"[:100], kind)
    return {"run_key": period.key, "kind": kind.value, "state": row["state"], "route": result["route"],
            "reference": ref, "automatic": True,
            "submitted_at": row["submitted_at"].isoformat(timespec="seconds") if row["submitted_at"] else None}


__all__ = ["CHANNEL", "REQUESTABLE", "Route", "RouteConflict", "SubmissionConfigError", "SubmissionTarget",
           "WindowMissed", "record_automatic", "resolve_target", "submission_item_id", "submit"]
