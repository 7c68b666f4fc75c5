"""The submission route without Airflow: which route a run takes (param over configuration), the staged route
through the gateway exactly once, a month that already left by one route is not sent by another, and an
automatic result is recorded with its transport reference (the real MESH and SFTP peers: tests/peers).

Primary and refresh: each is its own submission (ledger item, archive, reference), so the refresh goes although
the primary went and neither goes twice; a submission whose window closed before it left is not sent and says
which period and kind missed; a confirmation is recorded once and never replaced."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from caldicott.dataset import pipeline, state_tables
from caldicott.dataset.builder import Period
from caldicott.dataset.calendar import Kind, Window
from caldicott.dataset.state_tables import ConfirmationConflict
from caldicott.dataset.submit import (
    Route,
    RouteConflict,
    SubmissionConfigError,
    WindowMissed,
    record_automatic,
    resolve_target,
    submission_item_id,
    submit,
)
from caldicott.dataset.writer import load_key, new_key
from caldicott.transport.ledger import Ledger, State, item_id
from caldicott.transport.staging import StagingSender

SEPT = Period.month(2026, 9)
MESH_CFG = {"route": "mesh", "mesh_mailbox": "X26ABC3", "mesh_workflow": "IAPT_V2_SUBMISSION"}
SFTP_CFG = {"route": "sftp", "sftp_conn_id": "caldicott_sftp_dataset", "sftp_directory": "/inbound/iapt"}


@pytest.mark.parametrize(("requested", "config", "route"), [
    (None, None, Route.STAGED),                      # nothing configured: the human route
    ("configured", {}, Route.STAGED),
    ("configured", MESH_CFG, Route.MESH),
    ("configured", SFTP_CFG, Route.SFTP),
    ("staged", MESH_CFG, Route.STAGED),              # a run can fall back to the human route
    ("sftp", {**MESH_CFG, **SFTP_CFG, "route": "mesh"}, Route.SFTP),
    ("MESH", MESH_CFG, Route.MESH),
])
def test_route_is_the_param_over_the_configuration(requested, config, route):
    target = resolve_target(requested, config, submitter="sub-1")
    assert target.route == route and target.automatic == (route != Route.STAGED)
    if route == Route.STAGED:
        assert target.recipient == "sub-1" and target.channel == "staging"
    if route == Route.MESH:
        assert (target.recipient, target.mesh_workflow, target.channel) == ("X26ABC3", "IAPT_V2_SUBMISSION", "mesh")
    if route == Route.SFTP:
        assert (target.sftp_conn_id, target.sftp_directory) == ("caldicott_sftp_dataset", "/inbound/iapt")


@pytest.mark.parametrize(("requested", "config", "message"), [
    ("mesh", None, "mesh_mailbox and mesh_workflow"),
    ("mesh", {"mesh_mailbox": "X26ABC3"}, "mesh_workflow"),
    ("sftp", {"route": "sftp"}, "sftp_conn_id"),
    ("sftp", {**SFTP_CFG, "sftp_directory": "/inbound/../etc"}, "'..'"),
    ("email", None, "submission_route must be one of"),
    ("configured", {"route": "portal"}, "configured route must be one of"),
    ("configured", {**MESH_CFG, "mesh_mailbx": "typo"}, "unknown submission configuration keys: mesh_mailbx"),
])
def test_misconfiguration_is_refused_clearly(requested, config, message):
    with pytest.raises(SubmissionConfigError, match=message):
        resolve_target(requested, config, submitter="sub-1")


@pytest.fixture
def written(synth_source, state_engine, tmp_path):
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()))
    pipeline.build_validate_write(synth_source.engine, state_engine, SEPT, s)
    return s


def test_staged_route_stages_once_and_asks_a_person(written, state_engine, tmp_path):
    target = resolve_target("configured", None, submitter="sub-1")
    sender = StagingSender(tmp_path / "staging")
    first = submit(state_engine, SEPT, target, sender)
    again = submit(state_engine, SEPT, target, sender)
    assert (first["sent"], again["sent"], again["already_sent"]) == (1, 0, 1)
    assert first["route"] == again["route"] == "staged" and not first["automatic"]
    # the same ledger item as the staging that the staged route has always used
    assert first["item_id"] == submission_item_id(SEPT) == item_id("monthly_dataset", "2026-09", "submission")
    staged = list((tmp_path / "staging" / "2026-09").glob("*.zip.enc"))
    archive = Path(state_tables.get(state_engine, "2026-09")["archive_path"])
    assert len(staged) == 1 and staged[0].read_bytes() == archive.read_bytes()
    assert state_tables.get(state_engine, "2026-09")["state"] == "staged"
    with pytest.raises(ValueError, match="staged route is confirmed by a person"):
        record_automatic(state_engine, SEPT, first)


def test_an_archive_changed_after_validation_does_not_leave(written, state_engine, tmp_path):
    """The gateway's 'validated' fact is established from the bytes: they must be the archive registered after the
    file-level rules passed. One byte changed on disk and the gateway refuses; nothing is staged."""
    archive = Path(state_tables.get(state_engine, "2026-09")["archive_path"])
    data = bytearray(archive.read_bytes())
    data[-1] ^= 0x01
    archive.write_bytes(bytes(data))
    out = submit(state_engine, SEPT, resolve_target("configured", None, submitter="sub-1"),
                 StagingSender(tmp_path / "staging"))
    assert out["sent"] == 0 and out.get("refused") == 1, out
    assert not list((tmp_path / "staging").rglob("*.zip.enc"))


def test_a_month_staged_is_not_sent_again_by_an_automatic_route(written, state_engine, tmp_path):
    submit(state_engine, SEPT, resolve_target("staged", None, submitter="sub-1"), StagingSender(tmp_path / "st"))
    mesh = resolve_target("mesh", MESH_CFG, submitter="sub-1")

    class NeverCalled:  # the route conflict is decided from the ledger before any transport is touched
        channel = "mesh"

        def send(self, item):
            raise AssertionError("sent a month that had already left")

        already_delivered = send

    out = submit(state_engine, SEPT, mesh, NeverCalled())
    assert out["route"] == "staged" and out["requested_route"] == "mesh" and not out["automatic"]
    assert out["already_sent"] == 1 and out["sent"] == 0
    assert Ledger(state_engine).get(out["item_id"]).channel == "staging"


def test_an_unfinished_attempt_by_another_route_is_refused(written, state_engine, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the staging folder should be")
    failed = submit(state_engine, SEPT, resolve_target("staged", None, submitter="sub-1"), StagingSender(blocker))
    assert failed["failed"] == 1 and Ledger(state_engine).get(failed["item_id"]).state == State.FAILED
    sftp = resolve_target("sftp", SFTP_CFG, submitter="sub-1")

    class Sftp:
        channel = "sftp"

    with pytest.raises(RouteConflict, match="re-run with submission_route=staged"):
        submit(state_engine, SEPT, sftp, Sftp())
    assert state_tables.get(state_engine, "2026-09")["state"] == "written"


# ---- primary and refresh, the window, the confirmation -------------------------------------------------------

AUG = Period.month(2026, 8)
#: the window taking September 2026 as primary and August as refresh (a test calendar row)
OCT_WINDOW = Window(dt.date(2026, 10, 1), dt.date(2026, 10, 27), "2026-08", "2026-09")
IN_WINDOW = dt.datetime(2026, 10, 5, 9, tzinfo=dt.UTC)


def test_refresh_is_its_own_submission_and_goes_although_the_primary_went(synth_source, state_engine, tmp_path):
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()))
    pipeline.build_validate_write(synth_source.engine, state_engine, AUG, s, Kind.PRIMARY)
    staging = StagingSender(tmp_path / "staging")
    target = resolve_target("staged", None, submitter="sub-1")
    primary = submit(state_engine, AUG, target, staging)
    pipeline.confirm(state_engine, AUG, "SDCS-P-0826", "sub-1")

    # a month later: the refresh of August, built again from the source, is a second submission
    built = pipeline.build_validate_write(synth_source.engine, state_engine, AUG, s, Kind.REFRESH, window=OCT_WINDOW,
                                          now=IN_WINDOW)
    assert built["rebuilt"] and built["kind"] == "refresh"
    refresh = submit(state_engine, AUG, target, staging, Kind.REFRESH, window=OCT_WINDOW, now=IN_WINDOW)
    again = submit(state_engine, AUG, target, staging, Kind.REFRESH, window=OCT_WINDOW, now=IN_WINDOW)
    assert (primary["sent"], refresh["sent"], again["sent"], again["already_sent"]) == (1, 1, 0, 1)
    assert refresh["item_id"] == submission_item_id(AUG, Kind.REFRESH) != primary["item_id"]
    assert refresh["kind"] == "refresh" and not refresh["confirmed"]
    files = sorted(p.name for p in (tmp_path / "staging" / "2026-08").glob("*.zip.enc"))
    assert files == ["iapt_2026-08_v2.1.zip.enc", "iapt_2026-08_v2.1_refresh.zip.enc"]
    rows = {k: state_tables.get(state_engine, "2026-08", k) for k in Kind}
    assert rows[Kind.PRIMARY]["archive_path"] != rows[Kind.REFRESH]["archive_path"]
    assert (rows[Kind.PRIMARY]["state"], rows[Kind.REFRESH]["state"]) == ("submitted", "staged")
    assert rows[Kind.REFRESH]["window_closes"] == dt.date(2026, 10, 27)
    assert (s.month_dir(AUG, Kind.REFRESH) / "report.html").exists()
    # the primary is reported as confirmed, with its reference, by a re-run
    rerun = submit(state_engine, AUG, target, staging)
    assert (rerun["already_sent"], rerun["confirmed"], rerun["submission_reference"]) == (1, True, "SDCS-P-0826")


def test_a_submission_whose_window_closed_is_not_sent_and_says_which(written, state_engine, tmp_path):
    closed = dt.datetime(2026, 10, 28, 0, 0, tzinfo=dt.UTC)    # midnight GMT (BST ended 25 Oct): closed
    staging = StagingSender(tmp_path / "staging")
    target = resolve_target("staged", None, submitter="sub-1")
    with pytest.raises(WindowMissed, match=r"2026-09 primary submission missed its window: the window closed on "
                                           r"2026-10-27"):
        submit(state_engine, SEPT, target, staging, window=OCT_WINDOW, now=closed)
    assert not list((tmp_path / "staging").rglob("*.enc"))
    assert state_tables.get(state_engine, "2026-09")["state"] == "missed"
    assert Ledger(state_engine).get(submission_item_id(SEPT)) is None       # nothing was even intended
    # the last minute of the close day is still inside the window (London, end of day)
    last_minute = dt.datetime(2026, 10, 27, 23, 59, tzinfo=dt.UTC)          # 23:59 GMT on the 27th
    assert not OCT_WINDOW.is_closed(last_minute) and OCT_WINDOW.is_closed(closed)


def test_a_confirmation_is_recorded_once_and_never_replaced(written, state_engine, tmp_path):
    submit(state_engine, SEPT, resolve_target("staged", None, submitter="sub-1"), StagingSender(tmp_path / "st"))
    first = pipeline.confirm(state_engine, SEPT, "SDCS-2026-09-01", "sub-1")
    when = state_tables.get(state_engine, "2026-09")["submitted_at"]
    same = pipeline.confirm(state_engine, SEPT, "SDCS-2026-09-01", "someone-else")
    assert (first["already_confirmed"], same["already_confirmed"]) == (False, True)
    with pytest.raises(ConfirmationConflict, match=r"2026-09 primary was confirmed on .* another reference"):
        pipeline.confirm(state_engine, SEPT, "SDCS-OTHER-99", "sub-1")
    row = state_tables.get(state_engine, "2026-09")
    assert (row["submission_reference"], row["submitted_by"], row["submitted_at"]) == ("SDCS-2026-09-01", "sub-1",
                                                                                       when)
