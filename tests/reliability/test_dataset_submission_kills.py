"""Kill points of the monthly data set's submissions (issue 16): the automatic routes and the refresh.

Each step runs in a forked child of the runner zygote (``dataset_kill_runner.py``: ``runner.py``'s machinery with
the submission flows added) and SIGKILLs itself at the kill point; the re-run is another child; a further re-run
must send nothing. The PEERS' own records are checked — the intermediary's MESH inbox (mesh-sandbox), its SFTP
folder, the staging folder — for each submission delivered exactly once:

* MESH and SFTP, primary: killed between the peer accepting the archive and the ledger recording it (the
  dangerous window), mid-transfer, after the intent, after the ledger's mark; the re-run asks the transport
  (MESH tracking by local id, SFTP by checksum) and sends nothing twice; the transport's reference is recorded;
* the refresh after its primary went: killed in the same windows, it still goes once, as its own message / file,
  and the primary is not sent again;
* a build killed half-way through writing the refresh's archive leaves nothing in clear (only the encrypted
  ``.part``, which the next run sweeps), nothing in the temporary folder, and the re-run builds it whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import pytest
from caldicott.dataset import pipeline, state_tables
from caldicott.dataset.builder import Period
from caldicott.dataset.calendar import Kind
from caldicott.dataset.submit import submission_item_id
from caldicott.dataset.writer import MAGIC
from caldicott.db import make_engine, sqlite_url
from caldicott.transport.ledger import DONE, Ledger

from devtools.peers.mesh import MeshPeer
from devtools.peers.sftp import SftpPeer

from . import conftest
from .conftest import KILLED, figure, new_state

SEPT = Period.month(2026, 9)
KEY = bytes(range(32))
INTERMEDIARY = MeshPeer.GP_MAILBOX          # a sandbox mailbox standing in for the intermediary's
MESH_CONFIG = {"route": "mesh", "mesh_mailbox": INTERMEDIARY, "mesh_workflow": "IAPT_V2_SUBMISSION"}
SFTP_CONFIG = {"route": "sftp", "sftp_conn_id": "caldicott_sftp_dataset", "sftp_directory": "/inbound/iapt"}
NAMES = {Kind.PRIMARY: "iapt_2026-09_v2.1.zip.enc", Kind.REFRESH: "iapt_2026-09_v2.1_refresh.zip.enc"}


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """The runner zygote with the submission flows (same kill points, same fork-per-job)."""
    runner = Path(__file__).with_name("dataset_kill_runner.py")
    with mock.patch.object(conftest, "RUNNER", runner):
        z = conftest.Zygote(tmp_path_factory.mktemp("dataset-zygote"))
    try:
        yield z
    finally:
        z.stop()


@pytest.fixture(scope="module")
def built(synth_source, tmp_path_factory):
    """September 2026 written as its primary and (rebuilt) as its refresh; each case copies the state database."""
    root = tmp_path_factory.mktemp("dataset-built")
    _url, state = new_state(root)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=root / "work", key=KEY)
    for kind in Kind:
        pipeline.build_validate_write(synth_source.engine, state, SEPT, s, kind)
    with state.begin() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    state.dispose()
    return {"state": root / "state.db", "work": root / "work"}


def _state(built: dict, tmp_path: Path) -> tuple[str, object]:
    shutil.copy(built["state"], tmp_path / "state.db")
    url = sqlite_url(tmp_path / "state.db")
    return url, make_engine(url)


def _archive(engine, kind: Kind) -> bytes:
    return Path(state_tables.get(engine, SEPT.key, kind)["archive_path"]).read_bytes()


def _until_done(zygote, job: dict, kills: list[dict]) -> tuple[dict, dict]:
    """Each kill point must SIGKILL the step; then it completes; then once more (which must send nothing)."""
    done, again = zygote.survive(job, kills)
    assert (again["sent"], again["already_sent"]) == (0, 1), again
    return done, again


def _inbox(peer: MeshPeer) -> dict[str, bytes]:
    """local id -> body of every message in the intermediary's inbox (then acknowledged)."""
    out: dict[str, bytes] = {}
    with peer.client(INTERMEDIARY) as box:
        for mid in box.list_messages():
            msg = box.retrieve_message(mid)
            assert msg.local_id not in out, f"{msg.local_id} arrived twice"
            out[msg.local_id] = msg.read()
            msg.close()
            box.acknowledge_message(mid)
    return out


# ---- MESH ------------------------------------------------------------------------------------------------------

MESH_CASES = [  # (kills of the primary, kills of the refresh)
    ([{"at": "after_send", "n": 1}], []),
    ([{"at": "after_intent", "n": 1}, {"at": "before_send", "n": 1}], [{"at": "after_mark", "n": 1}]),
    ([], [{"at": "after_send", "n": 1}, {"at": "reconcile", "n": 1}]),
]


@pytest.mark.parametrize(("primary_kills", "refresh_kills"), MESH_CASES,
                         ids=["primary-after_send", "primary-intent+before_send_refresh-after_mark",
                              "refresh-after_send+reconcile"])
def test_mesh_route_killed_and_rerun_delivers_each_submission_once(primary_kills, refresh_kills, zygote, built,
                                                                   tmp_path):
    url, state = _state(built, tmp_path)
    with MeshPeer(tmp_path / "mesh") as mesh:      # a sandbox of its own: MESH tracks by local id
        base = {"flow": "submission", "state_url": url, "month": SEPT.key, "route": "mesh", "config": MESH_CONFIG,
                "mesh": mesh.settings(mesh.SENDER_MAILBOX).__dict__}
        results = {}
        for kind, kills in ((Kind.PRIMARY, primary_kills), (Kind.REFRESH, refresh_kills)):
            results[kind], _ = _until_done(zygote, {**base, "kind": kind.value}, kills)
        inbox = _inbox(mesh)
    assert set(inbox) == {submission_item_id(SEPT, k) for k in Kind}, "a submission is missing or extra"
    for kind in Kind:
        assert inbox[submission_item_id(SEPT, kind)] == _archive(state, kind), kind
        entry = Ledger(state).get(submission_item_id(SEPT, kind))
        assert entry.state in DONE and entry.channel == "mesh"
        row = state_tables.get(state, SEPT.key, kind)
        assert row["state"] == "submitted" and row["submission_reference"] == results[kind]["reference"]
    figure("kill points survived", len(primary_kills) + len(refresh_kills))
    figure("kill points survived: data set submission mesh", len(primary_kills) + len(refresh_kills))


# ---- SFTP ------------------------------------------------------------------------------------------------------

SFTP_CASES = [
    ([{"at": "after_send", "n": 1}], []),
    ([{"at": "mid_send", "n": 1}], [{"at": "after_send", "n": 1}]),
    ([], [{"at": "mid_send", "n": 1}, {"at": "after_send", "n": 1}, {"at": "reconcile", "n": 1}]),
]


@pytest.mark.parametrize(("primary_kills", "refresh_kills"), SFTP_CASES,
                         ids=["primary-after_send", "primary-mid_send_refresh-after_send",
                              "refresh-mid_send+after_send+reconcile"])
def test_sftp_route_killed_and_rerun_delivers_each_submission_once(primary_kills, refresh_kills, zygote, built,
                                                                   tmp_path):
    url, state = _state(built, tmp_path)
    with SftpPeer(tmp_path / "peer") as peer:
        base = {"flow": "submission", "state_url": url, "month": SEPT.key, "route": "sftp", "config": SFTP_CONFIG,
                "sftp": {"port": peer.port, "username": peer.username, "password": peer.password,
                         "host_key": peer.host_key_line}}
        results = {}
        for kind, kills in ((Kind.PRIMARY, primary_kills), (Kind.REFRESH, refresh_kills)):
            results[kind], _ = _until_done(zygote, {**base, "kind": kind.value}, kills)
        folder = peer.root / "inbound" / "iapt"
        landed = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(landed) == sorted(NAMES.values()), "a file is missing, doubled or left as .part"
    for kind in Kind:
        assert landed[NAMES[kind]] == _archive(state, kind)
        assert state_tables.get(state, SEPT.key, kind)["submission_reference"] == f"/inbound/iapt/{NAMES[kind]}"
    figure("kill points survived", len(primary_kills) + len(refresh_kills))
    figure("kill points survived: data set submission sftp", len(primary_kills) + len(refresh_kills))


# ---- staged, the refresh after the primary --------------------------------------------------------------------

STAGED_REFRESH_CASES = [
    [{"at": "after_send", "n": 1}],
    [{"at": "before_rename", "n": 1}, {"at": "after_mark", "n": 1}],
]


@pytest.mark.parametrize("kills", STAGED_REFRESH_CASES, ids=["after_send", "before_rename+after_mark"])
def test_staged_refresh_killed_after_the_primary_went(kills, zygote, built, tmp_path):
    url, state = _state(built, tmp_path)
    staging = tmp_path / "staging"
    base = {"flow": "submission", "state_url": url, "month": SEPT.key, "route": "staged", "staging": staging}
    _until_done(zygote, {**base, "kind": "primary"}, [])
    _, again = _until_done(zygote, {**base, "kind": "refresh"}, kills)
    assert again["route"] == "staged" and not again["automatic"]
    files = {p.name: p for p in (staging / SEPT.key).iterdir()}
    assert sorted(files) == sorted(NAMES.values()), files
    for kind in Kind:
        assert files[NAMES[kind]].read_bytes() == _archive(state, kind)
        assert state_tables.get(state, SEPT.key, kind)["state"] == "staged"     # waiting for the submitter
    figure("kill points survived", len(kills))
    figure("kill points survived: data set refresh staging", len(kills))


# ---- nothing in clear after a kill mid-write -------------------------------------------------------------------

def test_build_killed_mid_write_leaves_nothing_in_clear(zygote, synth_source, tmp_path):
    url, state = new_state(tmp_path / "state")
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    tmp.mkdir()
    job = {"flow": "submission_build", "records_url": synth_source.url, "state_url": url, "month": SEPT.key,
           "kind": "refresh", "work_dir": work, "key_hex": KEY.hex(), "tmp": tmp}
    rc, _ = zygote.run({**job, "kill": {"at": "mid_archive", "n": 1}})
    assert rc == KILLED
    left = [p for p in work.rglob("*") if p.is_file()]
    assert [p.name for p in left] == [f"{NAMES[Kind.REFRESH]}.part"], left        # only the half archive ...
    assert left[0].read_bytes().startswith(MAGIC)                                 # ... and that is ciphertext
    assert list(tmp.iterdir()) == [] and state_tables.get(state, SEPT.key, Kind.REFRESH) is None

    rc, result = zygote.run(job)
    assert rc == 0 and result["rebuilt"], result
    numbers = set(pipeline.mpi_numbers(state, SEPT, pipeline.Settings(org_provider="ZZZ01", work_dir=work, key=KEY),
                                       Kind.REFRESH))
    assert numbers and list(tmp.iterdir()) == []
    for f in work.rglob("*"):
        if not f.is_file():
            continue
        assert not f.name.endswith(".part"), "the next run did not sweep the half archive"
        data = f.read_bytes()
        if f.name.endswith(".enc"):
            assert data.startswith(MAGIC)
        else:     # the report's files: counts and opaque ids only
            assert f.name in {"report.html", "figures.csv", "quarantine.csv", "optout_statement.json"}, f
            assert not any(n.encode() in data for n in numbers), f"an NHS number in clear in {f.name}"
    figure("kill points survived", 1)
    figure("kill points survived: data set build (nothing in clear)", 1)
