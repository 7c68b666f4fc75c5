"""Airflow adapter for the print-and-post house: the ``caldicott_print`` connection -> a post sender.

* connection type ``sftp`` (host, port, login, password or key; extras ``host_key`` pinned as for referrers,
  ``remote_path`` the folder batches go under, ``certificate_path`` the print house's encryption
  certificate; ``connections``, default 2: uploads at once, each on its own SSH connection): each posted copy
  goes straight to the print house over SFTP
  (:class:`caldicott.transport.post.SftpPostSender`, through :func:`caldicott_airflow.sftp.sftp_sender`, which
  refuses a connection without a pinned host key);
* any other type with extras ``staging_dir`` and ``certificate_path``: the batch is written to a local
  folder (:class:`caldicott.transport.post.StagedPostSender`) for a named person or a later collection.
"""

from __future__ import annotations

import contextlib
import queue
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PEER = "print house"
#: SFTP connections to the print house a batch uploads on at once (extra ``connections``; 1: one at a time)
DEFAULT_CONNECTIONS = 2


class ConcurrentPostSender:
    """Posted copies over several SFTP connections to the print house at once (extra ``connections``).

    Why: a posted letter takes a dozen SFTP round trips (upload ``.part``, read it back for the checksum, rename),
    so one connection spends most of its time waiting for the print house's replies. Each upload is still whole on
    one connection (``.part`` + checksum + rename); the gateway sends ``concurrency`` at a time because the print
    house can be asked what arrived (``reconcilable``: the final file and its checksum), so a crash mid-chunk is
    reconciled file by file and nothing is posted twice."""

    reconcilable = True

    def __init__(self, senders: list[Any]) -> None:
        self._senders = list(senders)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for sender in self._senders:
            self._free.put(sender)
        self.channel = self._senders[0].channel
        self.concurrency = len(self._senders)

    def _use(self, call: Callable[[Any], Any]) -> Any:
        sender = self._free.get()
        try:
            return call(sender)
        finally:
            self._free.put(sender)

    def send(self, item: Any) -> str:
        return self._use(lambda s: s.send(item))

    def already_delivered(self, item: Any) -> str | None:
        return self._use(lambda s: s.already_delivered(item))

    def close(self) -> None:
        for sender in self._senders:
            sender.close()

    def __getattr__(self, name: str) -> Any:
        """Anything else a sender may declare (e.g. ``country``, checked by the gateway) is the first one's."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._senders[0], name)


class _KnownDirs:
    """An SFTP client that remembers the directories it has seen, for the life of one connection.

    Why: each posted letter is one file in the day's batch folder, and the sender makes sure that folder exists
    before every upload (a ``stat`` per path component: two round trips of the dozen a letter takes). A folder seen
    once on this connection is not asked about again. If it vanished meanwhile, the upload into it fails, the
    letter is ``failed`` and retried on a new connection (which asks again): nothing is sent twice or lost. With
    several connections (:class:`ConcurrentPostSender`) two may create the day's folder at once: the one that
    finds it already made carries on."""

    def __init__(self, sftp: Any) -> None:
        self._sftp = sftp
        self._dirs: dict[str, Any] = {}

    def stat(self, path: str) -> Any:
        known = self._dirs.get(path)
        if known is not None:
            return known
        attrs = self._sftp.stat(path)
        if attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode):
            self._dirs[path] = attrs
        return attrs

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """Create ``path``; if another connection of the same batch created it first, that is success too."""
        try:
            self._sftp.mkdir(path, mode)
        except OSError as refused:
            try:
                made = stat.S_ISDIR(self.stat(path).st_mode or 0)
            except OSError:
                made = False
            if not made:   # absent or not a folder: the original error stands
                raise refused from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sftp, name)


def remembering_dirs(connect: Callable[[], Any]) -> Callable[[], Any]:
    """``connect`` (an SFTP connector) whose clients remember the directories they have seen (:class:`_KnownDirs`)."""

    @contextlib.contextmanager
    def connector() -> Iterator[Any]:
        with connect() as sftp:
            yield _KnownDirs(sftp)

    return connector


def post_sender(conn_id: str):
    """``(sender, print house certificate PEM)`` for the connection ``conn_id``."""
    from airflow.sdk import BaseHook
    from caldicott.transport.post import SftpPostSender, StagedPostSender

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    if not extra.get("certificate_path"):
        raise ValueError(f"connection {conn_id} has no certificate_path: posted copies are never sent unencrypted")
    cert = Path(extra["certificate_path"]).read_text()
    if conn.conn_type == "sftp":
        from caldicott_airflow.sftp import sftp_sender

        remote = str(extra.get("remote_path") or "/")
        senders = []
        for _ in range(max(1, int(extra.get("connections") or DEFAULT_CONNECTIONS))):
            sftp = sftp_sender(conn_id, peer=PEER)
            sftp.connect = remembering_dirs(sftp.connect)
            senders.append(SftpPostSender(sftp, remote))
        return (senders[0] if len(senders) == 1 else ConcurrentPostSender(senders)), cert
    if not extra.get("staging_dir"):
        raise ValueError(f"connection {conn_id} is neither an SFTP connection nor has a staging_dir")
    return StagedPostSender(extra["staging_dir"]), cert
