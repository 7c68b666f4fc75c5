"""Private keys are owner-only from the first byte (issue 14): every key the demo and the tests write is 0600 in
a 0700 folder, whatever the umask.

The keys are made the way ``make demo`` and the e2e session make them: the workspace's synthetic records
(``devtools.bootstrap.seed``, which writes ``peer-keys/``) and each stand-in peer that keeps key material (MESH
TLS, SFTP host key and password, the print house, the data set key, SMTP with TLS, the opt-out cache key, the test
directory's TLS key). The umask is 0 while they are
written, so a mode can only come from the writer (:func:`caldicott.crypto.keys.write_private`), not from a
cautious shell.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
from caldicott.crypto import keys

from devtools.bootstrap import Workspace, seed
from devtools.ldap_server import _tls_files
from devtools.peers.mesh import MeshPeer
from devtools.peers.monthly_dataset import MonthlyDatasetConfig
from devtools.peers.ndop_config import NdopConfig
from devtools.peers.print_house import PrintHouse
from devtools.peers.sftp import SftpPeer
from devtools.peers.smtp import SmtpPeer


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _secret(path: Path) -> bool:
    """Key material and passwords, by content or by name."""
    name = path.name
    return (b"PRIVATE KEY" in path.read_bytes() or name.endswith(".key") or "_key" in name
            or name == "password")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_every_demo_and_test_key_is_0600_in_a_0700_folder(tmp_path):
    root = tmp_path / "demo"
    with umask(0):
        ws = Workspace(root / "workspace")
        seed(ws, patients=60, seed_value=3)
        peers = root / "workspace" / "peers"
        MeshPeer(peers / "mesh")                     # constructors write the key material; nothing is started
        SftpPeer(peers / "referrers")
        PrintHouse(peers / "print_house", sftp=False)
        MonthlyDatasetConfig(peers / "monthly_dataset")
        SmtpPeer(peers / "smtp", tls="starttls")
        NdopConfig(peers / "ndop")                   # the opt-out cache key
        _tls_files(root / "ldap")                    # the test directory's TLS key (devtools/ldap_server.py)
        keys.cached_identity(ws.keys_dir, "disclosure-requester")   # devtools/demos/disclosure_request.py

    secrets = sorted(p for p in root.rglob("*") if p.is_file() and _secret(p))
    names = {p.name for p in secrets}
    assert {"ssh_host_ed25519_key", "password", "server_key.pem", "client_key.pem", "PRINTHOUSE.key",
            "dataset.key", "disclosure-requester.key", "cache.key", "server.key"} <= names, names
    assert sum(p.parent == ws.keys_dir and p.suffix == ".key" for p in secrets) >= 2
    assert len({p.parent for p in secrets if p.name == "server_key.pem"}) == 2          # MESH and SMTP
    loose = [f"{p.relative_to(root)} {_mode(p):o} (folder {_mode(p.parent):o})" for p in secrets
             if _mode(p) != 0o600 or _mode(p.parent) != 0o700]
    assert loose == []
    assert not [p for p in root.rglob("*.tmp")]                                          # no half-written keys


def test_write_private_creates_0600_from_the_first_byte_and_replaces_a_looser_file(tmp_path, monkeypatch):
    folder = tmp_path / "keys"
    folder.mkdir()
    os.chmod(folder, 0o755)  # noqa: S103 - the loose folder the writer must tighten
    target = folder / "svc.key"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    opened: list[tuple[int, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        opened.append((flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    with umask(0):
        keys.write_private(target, b"-----BEGIN PRIVATE KEY-----\n")
    assert opened and all(mode == 0o600 and flags & os.O_CREAT and flags & os.O_EXCL for flags, mode in opened)
    assert target.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
    assert _mode(target) == 0o600 and _mode(folder) == 0o700 and sorted(folder.iterdir()) == [target]
