"""A real SFTP server on 127.0.0.1 standing in for referrers' landing servers (asyncssh, in a thread).

The server keeps a chroot-like root directory (``workdir/sftp/root``): clients see ``/`` there and
cannot leave it. Its Ed25519 host key is generated once into the workdir, so the key pinned in the
Airflow connection stays valid across restarts; one user logs in with a password generated into a
file readable by the owner only. :meth:`SftpPeer.go_down` / :meth:`SftpPeer.come_up` close and reopen
the listener on the same port (and drop live sessions), for "referrer down, then back" tests.

``start_for_demo(workdir)`` is found by the demo and the e2e fixture; ``airflow_env()`` gives
``AIRFLOW_CONN_CALDICOTT_SFTP_REFERRER`` with the host key in its extras (``host_key``). The same server stands in
for the receiving providers that take transfer-of-care reports on their own SFTP server: ``providers`` (connection
id -> remote path; the demo reads them from the records source, ``devtools/providers.py``) adds one connection per
provider to ``airflow_env()``, each to this server, with its remote path made under the root.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from pathlib import Path

import asyncssh
from caldicott.crypto.keys import private_dir, write_private

# asyncssh logs every channel open and close at INFO: noise in the demo's summary, not news
logging.getLogger("asyncssh").setLevel(logging.WARNING)

CONN_ID = "caldicott_sftp_referrer"
USER = "referrer"


class _Server(asyncssh.SSHServer):
    def __init__(self, peer: SftpPeer) -> None:
        self.peer = peer
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.peer._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.peer._connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        if self.peer.refuse_login:
            return False
        return secrets.compare_digest(username, self.peer.username) and secrets.compare_digest(
            password, self.peer.password)


class SftpPeer:
    """An SFTP server on loopback; a context manager in tests."""

    name = "sftp"

    def __init__(self, workdir: Path, port: int = 0, username: str = USER,
                 providers: dict[str, str] | None = None) -> None:
        self.dir = Path(workdir) / "sftp"
        self.root = self.dir / "root"
        private_dir(self.dir)      # holds the host key and the password: 0700
        self.root.mkdir(parents=True, exist_ok=True)
        self.providers = dict(providers or {})
        for remote in self.providers.values():   # the providers' landing folders exist, as on their own servers
            (self.root / remote.strip("/")).mkdir(parents=True, exist_ok=True)
        self.username = username
        self.password = self._secret_file(self.dir / "password", lambda: secrets.token_urlsafe(18))
        key_path = self.dir / "ssh_host_ed25519_key"
        if not key_path.exists():   # 0600 from the first byte (asyncssh's own writer leaves the mode to the umask)
            write_private(key_path, asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        self.host_key = asyncssh.read_private_key(str(key_path))
        self.port = port
        self.refuse_login = False
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _secret_file(path: Path, make) -> str:
        if path.exists():
            return path.read_text().strip()
        value = make()
        write_private(path, value.encode())
        return value

    # ---- what clients pin --------------------------------------------------------------------------
    @property
    def host_key_line(self) -> str:
        """The server's public host key, ``"ssh-ed25519 AAAA..."`` (what the connection's extras pin)."""
        return " ".join(self.host_key.export_public_key("openssh").decode().split()[:2])

    def connection(self, **extra) -> dict:
        return {"conn_type": "sftp", "host": "127.0.0.1", "port": self.port, "login": self.username,
                "password": self.password,
                "extra": {"host_key": self.host_key_line, "create_dirs": "true", "conn_timeout": "10",
                          **extra}}

    def airflow_env(self) -> dict[str, str]:
        env = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.connection()) for conn_id in self.providers}
        env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(self.connection())
        return env

    def connector(self, *, host_key: str | None = None, password: str | None = None, timeout: float = 5.0):
        """A domain-side connector to this server (tests and the benchmark)."""
        from caldicott.transport.sftp import paramiko_connector

        return paramiko_connector("127.0.0.1", self.port, self.username, host_key=host_key or self.host_key_line,
                                  password=password or self.password, timeout=timeout)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def _run(self, coro, timeout: float = 30):
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        root = str(self.root).encode()
        self._acceptor = await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self.host_key], server_factory=lambda: _Server(self),
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root), allow_scp=False,
            reuse_address=True)
        self.port = self._acceptor.get_port()

    async def _close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()

    def start(self) -> SftpPeer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-peer", daemon=True)
        self._thread.start()
        try:
            self._run(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def go_down(self) -> None:
        """Stop listening and drop every session; the port stays reserved for :meth:`come_up`."""
        self._run(self._close())

    def come_up(self) -> None:
        """Listen again, on the same port."""
        self._run(self._listen())

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            if self._loop.is_running():
                self._run(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None
            self._thread = None

    def __enter__(self) -> SftpPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_for_demo(workdir: Path, records_db: Path | None = None) -> SftpPeer:
    """The referrers' server, also standing in for every SFTP receiving provider in the records source."""
    from devtools.providers import receiving_providers, sftp_connections

    return SftpPeer(Path(workdir), providers=sftp_connections(receiving_providers(records_db))).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.peers.sftp WORKDIR``: serve until stdin closes; print the connection as JSON.

    Lets a benchmark run the server in a process of its own, so its CPU and memory are not counted
    as the client's.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    with SftpPeer(args.workdir) as peer:
        print(json.dumps({**peer.connection(), "root": str(peer.root)}), flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
