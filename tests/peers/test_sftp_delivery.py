"""SFTP delivery against a real SSH/SFTP server on loopback (asyncssh, ``devtools/peers/sftp.py``).

Files arrive whole, with the right bytes and permissions; a reader polling the directory never sees a
partial file; a wrong host key is refused before anything is written; a peer that is down and comes
back is delivered to on the next attempt; a re-run writes the same file name once. The Airflow adapter
(``SFTPHook`` reading an ``AIRFLOW_CONN_*`` connection) is exercised the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import threading

import asyncssh
import pytest
from caldicott.gateway import release
from caldicott.policy.evidence import establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.ledger import Intent, Ledger, State
from caldicott.transport.sftp import HostKeyError, SftpSender
from caldicott.updates import deliver

from devtools.peers.sftp import SftpPeer, _Server


@pytest.fixture
def peer(tmp_path):
    with SftpPeer(tmp_path) as p:
        yield p


def _item(payload: bytes, name: str = "CT001_sessions_2026-10-14_csv-v1.csv", address: str = "/inbound/zp000",
          iid: str = "referrer_updates-test1") -> Outbound:
    return Outbound(iid, Purpose.REFERRER_UPDATE, "CT001", "sftp", payload, Protection.SFTP, address=address,
                    headers={"filename": name},
                    facts={"contract_fields_applied": establish("contract_fields_applied", payload)})


def _other_key() -> str:
    return " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()[:2])


def test_file_arrives_whole_with_owner_only_permissions(peer):
    payload = b"contract_id,referrer_ods\r\nCT001,ZP000\r\n"
    with SftpSender(peer.connector(), create_dirs=True) as sender:
        ref = sender.send(_item(payload))
    final = peer.root / "inbound/zp000/CT001_sessions_2026-10-14_csv-v1.csv"
    assert ref == "/inbound/zp000/CT001_sessions_2026-10-14_csv-v1.csv"
    assert final.read_bytes() == payload
    assert final.stat().st_mode & 0o777 == 0o640
    assert os.listdir(final.parent) == [final.name]          # no .part left behind


def test_a_reader_polling_never_sees_a_partial_file(peer):
    payload = os.urandom(24 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    directory = peer.root / "inbound" / "big"
    directory.mkdir(parents=True)
    seen: list[tuple[str, int]] = []
    bad: list[str] = []
    stop = threading.Event()

    crashed: list[BaseException] = []

    def poll():
        try:
            while not stop.is_set():
                for entry in os.scandir(directory):
                    if entry.name.endswith(".part"):
                        # renamed between the listing and the stat: the upload ended
                        with contextlib.suppress(FileNotFoundError):
                            seen.append((entry.name, entry.stat().st_size))
                        continue
                    data = (directory / entry.name).read_bytes()
                    if len(data) != len(payload) or hashlib.sha256(data).hexdigest() != digest:
                        bad.append(entry.name)
                    seen.append((entry.name, len(data)))
        except BaseException as exc:   # a crashed reader must fail the test, not end silently
            crashed.append(exc)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        with SftpSender(peer.connector()) as sender:
            sender.send(_item(payload, name="big.csv", address="/inbound/big"))
    finally:
        stop.set()
        reader.join()
    assert not crashed, f"the polling reader crashed: {crashed!r}"
    assert not bad, "a reader saw a final file that was not the whole, verified file"
    assert any(name == "big.csv.part" for name, _ in seen), "the poller never saw the upload in flight"
    assert (directory / "big.csv").read_bytes() == payload


class _FaultySftpServer(asyncssh.SFTPServer):
    """An SFTP server whose disk does not keep what it is given: ``fault`` is applied to every write's bytes."""

    fault = staticmethod(lambda data: data)

    def write(self, file_obj, offset, data):
        return super().write(file_obj, offset, self.fault(data))


class _FaultyPeer(SftpPeer):
    def __init__(self, workdir, fault) -> None:
        super().__init__(workdir)
        self.server_class = type("Faulty", (_FaultySftpServer,), {"fault": staticmethod(fault)})

    async def _listen(self) -> None:
        root = str(self.root).encode()
        self._acceptor = await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self.host_key], server_factory=lambda: _Server(self),
            sftp_factory=lambda chan: self.server_class(chan, chroot=root), allow_scp=False, reuse_address=True)
        self.port = self._acceptor.get_port()


@pytest.mark.parametrize(("fault", "message"), [
    (lambda data: bytes([data[0] ^ 1]) + data[1:], "uploaded checksum differs"),   # a flipped bit
    (lambda data: data[:-1], "uploaded size differs"),                              # a lost byte
    (lambda data: data + b"!", "uploaded size differs"),                            # a byte too many
], ids=["flipped", "short", "long"])
def test_an_upload_the_server_did_not_keep_is_discarded_not_renamed(tmp_path, fault, message):
    """The read-back (size and sha256 of the ``.part`` as the server holds it, read through the upload's own handle
    before the rename) is what stands between a server that mangles a write and a wrong file under its final name:
    paramiko's pipelined writes do not report a failed write by themselves."""
    with _FaultyPeer(tmp_path, fault) as faulty, SftpSender(faulty.connector(), create_dirs=True) as sender:
        with pytest.raises(TransportError, match=message) as info:
            sender.send(_item(os.urandom(70_000)))   # more than one write request, and prefetched when read back
        assert info.value.retryable is True
        assert os.listdir(faulty.root / "inbound/zp000") == []    # neither the final file nor the .part


def test_wrong_host_key_is_refused_and_nothing_is_written(peer):
    with (pytest.raises(HostKeyError, match="host key CHANGED") as info,
          SftpSender(peer.connector(host_key=_other_key()), create_dirs=True) as sender):
        sender.send(_item(b"a\r\n"))
    assert info.value.retryable is False
    assert list(peer.root.rglob("*")) == []


def test_login_refused_is_retryable(peer):
    with (pytest.raises(TransportError, match="login refused") as info,
          SftpSender(peer.connector(password="wrong")) as sender):
        sender.send(_item(b"a\r\n"))
    assert info.value.retryable is True


def _plan(state_engine, item: Outbound) -> None:
    Ledger(state_engine).record_intent([Intent(item.item_id, "referrer_updates", item.purpose.value, "2026-10-14",
                                               item.recipient, "sftp", "CT001")])


def test_down_then_up_delivers_on_the_next_attempt(peer, state_engine):
    item = _item(b"contract_id\r\nCT001\r\n")
    _plan(state_engine, item)
    peer.go_down()
    with SftpSender(peer.connector(), peer="CT001", create_dirs=True) as sender:
        report = release([item], sender, state_engine)
    assert report.failed and "CT001" in report.failed[item.item_id]
    assert Ledger(state_engine).get(item.item_id).state == State.FAILED
    peer.come_up()
    with SftpSender(peer.connector(), peer="CT001", create_dirs=True) as sender:
        report = release([item], sender, state_engine)
    assert report.sent == [item.item_id]
    assert (peer.root / "inbound/zp000" / item.headers["filename"]).read_bytes() == item.payload


def test_crash_mid_send_is_reconciled_by_checksum(peer, state_engine):
    item = _item(b"contract_id\r\nCT001\r\n")
    _plan(state_engine, item)
    with SftpSender(peer.connector(), create_dirs=True) as sender:
        sender.send(item)                          # it arrived ...
    Ledger(state_engine).begin_send(item.item_id)  # ... but the worker died before recording it
    with SftpSender(peer.connector()) as sender:
        assert sender.already_delivered(item) is not None
        assert sender.already_delivered(_item(b"other bytes")) is None
        report = release([item], sender, state_engine)
    assert report.already_sent == [item.item_id]
    assert Ledger(state_engine).get(item.item_id).state == State.SENT


def test_existing_file_is_replaced_atomically(peer):
    with SftpSender(peer.connector(), create_dirs=True) as sender:
        sender.send(_item(b"first\r\n"))
        sender.send(_item(b"second version\r\n"))
    assert (peer.root / "inbound/zp000/CT001_sessions_2026-10-14_csv-v1.csv").read_bytes() == b"second version\r\n"
    assert len(os.listdir(peer.root / "inbound/zp000")) == 1


def test_rerun_of_a_contract_is_idempotent(peer, state_engine, synth_source):
    contracts = synth_source.result.frames["contract"]
    cid = contracts.loc[contracts["transport"] == "sftp", "contract_id"].iloc[0]

    def factory(options, contract):
        return SftpSender(peer.connector(), peer=options.contract_id, create_dirs=True)

    day = dt.date(2026, 10, 31)
    first = deliver.deliver_contract(synth_source.engine, state_engine, cid, day, day + dt.timedelta(days=1),
                                     day.isoformat(), factory, activity_month=dt.date(2026, 10, 1))
    files = sorted(p.relative_to(peer.root) for p in peer.root.rglob("*.csv"))
    stamps = {p: p.stat().st_mtime_ns for p in peer.root.rglob("*.csv")}
    again = deliver.deliver_contract(synth_source.engine, state_engine, cid, day, day + dt.timedelta(days=1),
                                     day.isoformat(), factory, activity_month=dt.date(2026, 10, 1))
    assert first.files == {"sessions": "sent", "activity": "sent"}
    assert again.files == {"sessions": "already_sent", "activity": "already_sent"}
    assert sorted(p.relative_to(peer.root) for p in peer.root.rglob("*.csv")) == files
    assert {p: p.stat().st_mtime_ns for p in peer.root.rglob("*.csv")} == stamps
    assert [str(f.name) for f in files] == [f"{cid}_activity_2026-10_csv-v1.csv",
                                            f"{cid}_sessions_2026-10-31_csv-v1.csv"]


def _busiest_day(records, referrer_ods: str) -> dt.date:
    import pandas as pd
    from caldicott.updates import build

    sessions = build.load_sessions(records, *build.london_bounds(dt.date(2020, 1, 1), dt.date(2026, 11, 1)),
                                   referrer_ods)
    days = pd.to_datetime(sessions["contact_at"]).dt.tz_localize("UTC").dt.tz_convert("Europe/London").dt.date
    counts = days.value_counts()
    return min(d for d, n in counts.items() if n == counts.max())


def test_fhir_contract_delivered_over_sftp(peer, state_engine, synth_source, monkeypatch):
    """fhir-r4-v1 contracts over the real SFTP server: a Bundle per day under a .json name, the day's
    sessions as Encounters; summary text only for the contract that has summaries, in no form for the other."""
    import base64

    from caldicott.records.synth import SUMMARIES
    from caldicott.updates import build, fhir

    monkeypatch.setenv(fhir.NAMESPACE_ENV, "https://fhir.caldicott.invalid")   # configuration: fail closed without

    contracts = synth_source.result.frames["contract"]
    sftp = contracts[contracts["transport"] == "sftp"]
    orgs = build.known_organisations(synth_source.engine)

    def factory(options, contract):
        return SftpSender(peer.connector(), peer=options.contract_id, create_dirs=True)

    for with_summaries in (False, True):
        cid = sftp.loc[sftp["include_summaries"] == with_summaries, "contract_id"].iloc[0]
        contract = {**deliver.load_contract(synth_source.engine, cid), "file_format": "fhir-r4-v1"}
        day = _busiest_day(synth_source.engine, contract["referrer_org_code"])
        args = (synth_source.engine, state_engine, cid, day, day + dt.timedelta(days=1), day.isoformat(), factory)
        result = deliver.deliver_contract(*args, contract=contract)
        assert result.files == {"sessions": "sent"}
        folder = peer.root / contract["remote_path"].lstrip("/")
        path = folder / f"{cid}_sessions_{day.isoformat()}_fhir-r4-v1.json"
        assert sorted(os.listdir(folder)) == [path.name]                # no .part, no second file
        assert path.stat().st_mode & 0o777 == 0o640
        data = path.read_bytes()
        bundle = json.loads(data)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        expected, _ = build.screen(build.load_sessions(synth_source.engine, *build.london_bounds(
            day, day + dt.timedelta(days=1)), contract["referrer_org_code"]), orgs)
        encounters = fhir.resources(bundle, "Encounter")
        assert len(encounters) > 0
        assert [e["identifier"][0]["value"] for e in encounters] == expected["care_contact_id"].tolist()
        assert {e["identifier"][0]["system"] for e in encounters} == {fhir.systems().care_contact_id}
        assert {e["subject"]["identifier"]["system"] for e in encounters} == {"https://fhir.nhs.uk/Id/nhs-number"}
        assert [e["subject"]["identifier"]["value"] for e in encounters] == expected["nhs_number"].tolist()
        assert {r["requester"]["identifier"]["value"] for r in fhir.resources(bundle, "ServiceRequest")} == {
            contract["referrer_org_code"]}
        notes = fhir.resources(bundle, "DocumentReference")
        if with_summaries:
            assert notes, "the summaries contract's day should have summaries"
            assert [fhir.summary_text(d) for d in notes] == expected["clinical_summary"].dropna().tolist()
        else:
            assert notes == [] and b"DocumentReference" not in data
            for text in SUMMARIES:
                assert text.encode() not in data and base64.b64encode(text.encode()) not in data
        stamp = path.stat().st_mtime_ns
        again = deliver.deliver_contract(*args, contract=contract)
        assert again.files == {"sessions": "already_sent"} and path.stat().st_mtime_ns == stamp


def test_peer_down_fails_naming_the_contract_only(peer, state_engine, synth_source):
    contracts = synth_source.result.frames["contract"]
    cid = contracts.loc[contracts["transport"] == "sftp", "contract_id"].iloc[0]
    peer.go_down()
    with pytest.raises(deliver.ContractDeliveryError) as info:
        deliver.deliver_contract(synth_source.engine, state_engine, cid, dt.date(2026, 10, 20),
                                 dt.date(2026, 10, 21), "2026-10-20",
                                 lambda o, c: SftpSender(peer.connector(), peer=o.contract_id))
    assert info.value.retryable
    assert str(info.value).startswith(f"contract {cid}: 1 file(s) not delivered: {cid}: peer unavailable")


# ---- the Airflow adapter: SFTPHook over an AIRFLOW_CONN_* connection ---------------------------------

def _use_connection(monkeypatch, peer, **extra):
    conn = peer.connection(**extra)
    conn["extra"] = {k: v for k, v in conn["extra"].items() if v is not None}
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_SFTP_TEST", json.dumps(conn))


def test_airflow_adapter_delivers_through_sftphook(peer, monkeypatch):
    from caldicott_airflow.sftp import sftp_sender

    _use_connection(monkeypatch, peer, compress="true")
    with sftp_sender("caldicott_sftp_test", peer="CT001") as sender:
        sender.send(_item(b"via hook\r\n"))
        assert sender.already_delivered(_item(b"via hook\r\n"))
        # no SSH compression, whatever the extras ask: the payloads are compressed or encrypted already
        transport = sender._client().get_channel().get_transport()
        assert (transport.local_compression, transport.remote_compression) == ("none", "none")
    assert (peer.root / "inbound/zp000/CT001_sessions_2026-10-14_csv-v1.csv").read_bytes() == b"via hook\r\n"


def test_airflow_adapter_refuses_a_changed_host_key(peer, monkeypatch):
    from caldicott_airflow.sftp import sftp_sender

    _use_connection(monkeypatch, peer, host_key=_other_key())
    with (pytest.raises(HostKeyError, match="CT001: host key"),
          sftp_sender("caldicott_sftp_test", peer="CT001") as sender):
        sender.send(_item(b"x\r\n"))
    assert list(peer.root.rglob("*")) == []


def test_airflow_adapter_requires_a_pinned_host_key(peer, monkeypatch):
    from caldicott_airflow.sftp import sftp_sender

    _use_connection(monkeypatch, peer, host_key=None)
    with pytest.raises(HostKeyError, match="no pinned host_key"):
        sftp_sender("caldicott_sftp_test", peer="CT001")
    _use_connection(monkeypatch, peer, host_key=None, no_host_key_check="true")
    with pytest.raises(HostKeyError, match="disables host key checking"):
        sftp_sender("caldicott_sftp_test", peer="CT001")
