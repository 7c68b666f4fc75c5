"""The print house's Airflow connection as the DAG opens it (``caldicott_airflow.print_house.post_sender``): several
SFTP connections uploading at once into a new day's folder, each letter whole, once, and reconcilable."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound

from devtools.peers.print_house import REMOTE_PATH, PrintHouse


@pytest.fixture
def printer(tmp_path, monkeypatch):
    house = PrintHouse(tmp_path / "print", sftp=True)
    for key, value in house.airflow_env().items():
        monkeypatch.setenv(key, value)
    yield house
    house.stop()


def _item(i: int, batch: str) -> Outbound:
    return Outbound(f"gp_letters-conn-{i}", Purpose.PATIENT_COPY, f"P{i}", "post", bytes([i % 251]) * (5000 + i),
                    Protection.CMS,
                    headers={"batch": batch})


def test_two_connections_upload_at_once_into_a_new_folder_each_file_whole_and_once(printer, monkeypatch):
    from caldicott_airflow.print_house import ConcurrentPostSender, post_sender

    conn = json.loads(printer.airflow_env()["AIRFLOW_CONN_CALDICOTT_PRINT"])
    conn["extra"]["connections"] = 2
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_PRINT", json.dumps(conn))
    sender, cert = post_sender("caldicott_print")
    assert isinstance(sender, ConcurrentPostSender) and sender.concurrency == 2 and sender.reconcilable
    assert cert == printer.cert_path.read_text()
    items = [_item(i, "2026-10-14_patient_post") for i in range(24)]
    errors: list[BaseException] = []

    def upload(part: list[Outbound]) -> None:
        try:
            for item in part:
                sender.send(item)
        except BaseException as exc:   # reported below: a thread's failure must fail the test
            errors.append(exc)

    # both connections create the day's folder at the same moment: the second finds it made and carries on
    threads = [threading.Thread(target=upload, args=(items[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        files = {p.name: p.read_bytes() for p in printer.files()}
        assert sorted(files) == sorted(f"{i.item_id}.pdf.p7m" for i in items)
        assert all(hashlib.sha256(files[f"{i.item_id}.pdf.p7m"]).hexdigest() == i.checksum for i in items)
        assert all(sender.already_delivered(i) for i in items)   # reconcilable: the file is the delivery
        assert sender.already_delivered(_item(99, "2026-10-14_patient_post")) is None
        assert all(p.parent.name == "2026-10-14_patient_post" and REMOTE_PATH.strip("/") in p.parts
                   for p in printer.files())
    finally:
        sender.close()


def test_one_connection_is_the_plain_sftp_post_sender(printer, monkeypatch):
    from caldicott.transport.post import SftpPostSender
    from caldicott_airflow.print_house import post_sender

    conn = json.loads(printer.airflow_env()["AIRFLOW_CONN_CALDICOTT_PRINT"])
    conn["extra"]["connections"] = 1
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_PRINT", json.dumps(conn))
    sender, _ = post_sender("caldicott_print")
    try:
        assert isinstance(sender, SftpPostSender)
        sender.send(_item(1, "b"))
        sender.send(_item(2, "b"))     # the folder is known on this connection: not asked about again
        assert len(printer.files()) == 2
    finally:
        sender.close()


class _Attrs:
    def __init__(self, mode: int) -> None:
        self.st_mode = mode


class _RacedClient:
    """An SFTP client whose ``mkdir`` loses the race: another connection made the folder a moment before."""

    def __init__(self, made: set[str]) -> None:
        self.made = made
        self.stats = 0

    def stat(self, path: str) -> _Attrs:
        import stat

        self.stats += 1
        if path in self.made:
            return _Attrs(stat.S_IFDIR | 0o750)
        raise FileNotFoundError(path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self.made.add(path)          # the other connection's mkdir landed first ...
        raise OSError("Failure")     # ... so ours fails, as SFTP reports it


def test_a_folder_made_by_another_connection_meanwhile_is_not_an_error():
    from caldicott_airflow.print_house import _KnownDirs

    client = _RacedClient(set())
    dirs = _KnownDirs(client)
    dirs.mkdir("/batches/day")                 # lost the race: the folder is there, so this is success
    stats = client.stats
    dirs.stat("/batches/day")                  # and it is remembered for the rest of the connection
    assert client.stats == stats
    with pytest.raises(OSError, match="Permission"):   # a mkdir that fails with no folder to show for it fails
        _KnownDirs(_RefusingClient(set())).mkdir("/batches/other")


class _RefusingClient(_RacedClient):
    def mkdir(self, path: str, mode: int = 0o777) -> None:
        raise OSError("Permission denied")
