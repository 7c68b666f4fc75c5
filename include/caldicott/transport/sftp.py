"""SFTP delivery: upload ``name.part``, verify size and sha256 by reading it back, then rename atomically.

A reader polling the remote directory sees either no file or the whole, verified file, never a partial
one (the SFTP provider has no upload-then-rename, so this module does it). File names are
chosen by the flow and are deterministic per (contract, interval), so a re-run replaces the same file or
skips it; it never adds a second one. ``already_delivered`` re-reads the final file and compares its
checksum, which is how the release gateway reconciles after a crash mid-send.

Host keys are pinned: a connector must be given the peer's known host key (the ``host_key`` extra of the
Airflow connection) and refuses a peer that presents another key, or none it knows; such a failure is
not retryable and nothing is written.

This module has no Airflow import. It talks to anything shaped like :class:`paramiko.SFTPClient`,
obtained from a *connector*: a callable returning a context manager that yields the client. Two exist:
:func:`paramiko_connector` here (tests, benchmarks) and the Airflow ``SFTPHook`` adapter in
``plugins/caldicott_airflow/sftp.py`` (the DAGs), which enforces the same host key rule.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import posixpath
import socket
import stat as stat_mod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import paramiko

from caldicott.transport.base import Outbound, TransportError

PART_SUFFIX = ".part"
DEFAULT_FILE_MODE = 0o640
CHUNK = 256 * 1024
#: files larger than this are read back with paramiko's prefetch (its largest single read request, 32 KiB)
PREFETCH_ABOVE = 32 * 1024


class HostKeyError(TransportError):
    """The peer's host key is not the pinned one (or none is pinned). Never retried; nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class SftpClient(Protocol):
    """The part of :class:`paramiko.SFTPClient` this module uses."""

    def open(self, filename: str, mode: str = "r", bufsize: int = -1) -> Any: ...
    def stat(self, path: str) -> Any: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def posix_rename(self, oldpath: str, newpath: str) -> None: ...
    def rename(self, oldpath: str, newpath: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def mkdir(self, path: str, mode: int = 0o777) -> None: ...


Connector = Callable[[], AbstractContextManager[SftpClient]]


def parse_host_key(host_key: str) -> paramiko.PKey:
    """``"ssh-ed25519 AAAA..."`` (OpenSSH known_hosts form, optional comment) -> a paramiko key."""
    parts = (host_key or "").split()
    if len(parts) < 2:
        raise HostKeyError("pinned host key is missing or not in 'type base64' form")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as exc:
        raise HostKeyError(f"pinned host key of type {parts[0]!r} could not be read") from exc


def connection_error(exc: BaseException, peer: str) -> TransportError:
    """Map a paramiko / socket failure to a TransportError naming only ``peer`` (an opaque id)."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(f"{peer}: host key CHANGED (does not match the pinned host_key); nothing sent")
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return HostKeyError(f"{peer}: host key not recognised (not the pinned host_key); nothing sent")
    if isinstance(exc, paramiko.AuthenticationException):
        return TransportError(f"{peer}: login refused ({type(exc).__name__})")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TransportError(f"{peer}: timed out")
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
        return TransportError(f"{peer}: peer unavailable ({type(exc).__name__})")
    return TransportError(f"{peer}: SFTP failure ({type(exc).__name__})")


def paramiko_connector(host: str, port: int, username: str, *, host_key: str, password: str | None = None,
                       private_key: paramiko.PKey | None = None, timeout: float = 10.0) -> Connector:
    """A connector that trusts exactly ``host_key`` for ``host:port`` (no system known_hosts, no agent).

    Connection failures propagate as paramiko / socket exceptions; :class:`SftpSender` maps them to
    :class:`TransportError` naming its own ``peer``.
    """
    pinned = parse_host_key(host_key)

    @contextlib.contextmanager
    def connect() -> Iterator[SftpClient]:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        name = host if port == 22 else f"[{host}]:{port}"
        client.get_host_keys().add(name, pinned.get_name(), pinned)
        try:
            client.connect(host, port=port, username=username, password=password, pkey=private_key,
                           look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout)
            sftp = client.open_sftp()
        except BaseException:
            client.close()
            raise
        try:
            yield sftp
        finally:
            sftp.close()
            client.close()

    return connect


def _safe_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or name.endswith(PART_SUFFIX):
        raise TransportError(f"refusing remote file name {name!r}", retryable=False)
    return name


class SftpSender:
    """A :class:`~caldicott.transport.base.Sender` that delivers files atomically over SFTP.

    ``item.address`` is the remote directory and ``item.headers["filename"]`` the file name. One SSH
    connection is opened on first use and kept for the sender's life: use it as a context manager (or
    call :meth:`close`). ``peer`` is an opaque name for messages (e.g. the contract id).
    """

    def __init__(self, connect: Connector, *, peer: str = "sftp peer", channel: str = "sftp",
                 file_mode: int = DEFAULT_FILE_MODE, create_dirs: bool = False) -> None:
        self.connect = connect
        self.peer = peer
        self.channel = channel
        self.file_mode = file_mode
        self.create_dirs = create_dirs
        self._stack: contextlib.ExitStack | None = None
        self._sftp: SftpClient | None = None

    # ---- connection -------------------------------------------------------------------------------
    def _client(self) -> SftpClient:
        if self._sftp is None:
            stack = contextlib.ExitStack()
            try:
                self._sftp = stack.enter_context(self.connect())
            except Exception as exc:
                stack.close()
                raise connection_error(exc, self.peer) from None
            self._stack = stack
        return self._sftp

    def close(self) -> None:
        stack, self._stack, self._sftp = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()

    def __enter__(self) -> SftpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- Sender -----------------------------------------------------------------------------------
    def _paths(self, item: Outbound) -> tuple[str, str]:
        directory = item.address or "."
        final = posixpath.join(directory, _safe_name(item.headers.get("filename", "")))
        return directory, final

    def send(self, item: Outbound) -> str:
        directory, final = self._paths(item)
        part = final + PART_SUFFIX
        try:
            sftp = self._client()
            if self._remote_sha256(sftp, final, len(item.payload)) == item.checksum:
                return final  # already there, byte for byte (a re-run after a lost ledger update)
            if self.create_dirs:
                self._makedirs(sftp, directory)
            # opened for reading too: the read-back below goes through the same handle, after the writes (a server
            # processes one file's requests in order), instead of closing and opening the file a second time
            with sftp.open(part, "w+b") as fh:
                sftp.chmod(part, self.file_mode)  # restrict before any byte is written
                if hasattr(fh, "set_pipelined"):
                    fh.set_pipelined(True)
                view = memoryview(item.payload)
                for start in range(0, len(view), CHUNK):
                    fh.write(view[start:start + CHUNK])
                fh.flush()
                attrs = fh.stat()   # the file's size as the server holds it, after every write
                digest = (self._sha256_read(fh, path=part, st=attrs) if attrs.st_size == len(item.payload)
                          else None)
            if digest is None:
                self._discard(sftp, part)
                raise TransportError(f"{self.peer}: uploaded size differs from the file's; discarded")
            if digest != item.checksum:
                self._discard(sftp, part)
                raise TransportError(f"{self.peer}: uploaded checksum differs from the file's; discarded")
            self._rename(sftp, part, final)
        except TransportError:
            self._drop_if_broken()
            raise
        except Exception as exc:
            self.close()
            raise connection_error(exc, self.peer) from None
        return final

    def already_delivered(self, item: Outbound) -> str | None:
        _, final = self._paths(item)
        try:
            digest = self._remote_sha256(self._client(), final, len(item.payload))
        except TransportError:
            raise
        except Exception as exc:
            self.close()
            raise connection_error(exc, self.peer) from None
        return final if digest == item.checksum else None

    # ---- helpers ----------------------------------------------------------------------------------
    def _drop_if_broken(self) -> None:
        sftp = self._sftp
        channel = getattr(sftp, "sock", None)
        if channel is not None and getattr(channel, "closed", False):
            self.close()

    @staticmethod
    def _remote_sha256(sftp: SftpClient, path: str, expected_size: int | None = None) -> str | None:
        """sha256 of the remote file, or None when it does not exist (or has another size)."""
        try:
            st = sftp.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:  # paramiko raises IOError(errno.ENOENT) for a missing file
            if getattr(exc, "errno", None) == 2:
                return None
            raise
        if st.st_mode is not None and not stat_mod.S_ISREG(st.st_mode):
            raise TransportError(f"remote path for this file is not a regular file ({path})", retryable=False)
        if expected_size is not None and st.st_size != expected_size:
            return None
        return SftpSender._sha256_of(sftp, path, st)

    @staticmethod
    def _sha256_of(sftp: SftpClient, path: str, st: Any) -> str:
        """sha256 of the remote file ``path``, read back to its end; ``st`` is its stat (regular file, size).

        (Used to tell whether a file already arrived: a file longer than ``st`` said by the time it is read does not
        match.)"""
        with sftp.open(path, "rb") as fh:
            return SftpSender._sha256_read(fh, path=path, st=st, to_end=True)

    @staticmethod
    def _sha256_read(fh: Any, *, path: str, st: Any, to_end: bool = False) -> str:
        """sha256 of an open remote file read back from the server from its start; ``st`` is the file's stat (regular
        file, size), which the caller has compared with the size it expects.

        Without ``to_end``, exactly ``st``'s size is read: the upload's own ``.part``, just stat'ed through its handle
        after every write, so a posted letter (a few kB) is one read request, not a second one that finds the end;
        bytes that are not there (a file cut short) change the digest. With ``to_end`` the file is read until the
        server says it ends, so bytes beyond ``st``'s size change the digest too; a read that returns less than asked,
        once ``st``'s size has been read, is the end (a buffered read is short only there). A file of more than
        :data:`PREFETCH_ABOVE` bytes is prefetched (paramiko's read-ahead: a thread of its own and every read
        request in flight at once); a smaller one is read with plain requests, without a thread per file."""
        if st.st_mode is not None and not stat_mod.S_ISREG(st.st_mode):
            raise TransportError(f"remote path for this file is not a regular file ({path})", retryable=False)
        size = st.st_size or 0
        h = hashlib.sha256()
        total = 0
        fh.seek(0)
        if hasattr(fh, "prefetch") and size > PREFETCH_ABOVE:
            fh.prefetch(size)
        while to_end or total < size:
            chunk = fh.read(CHUNK if to_end else min(CHUNK, size - total))
            if not chunk:
                break
            h.update(chunk)
            total += len(chunk)
            if to_end and len(chunk) < CHUNK and total >= size:
                break
        return h.hexdigest()

    @staticmethod
    def _discard(sftp: SftpClient, path: str) -> None:
        with contextlib.suppress(OSError):
            sftp.remove(path)

    @staticmethod
    def _rename(sftp: SftpClient, part: str, final: str) -> None:
        """Atomic replace where the server offers posix-rename; else remove-then-rename (never partial)."""
        try:
            sftp.posix_rename(part, final)
            return
        except OSError:
            pass  # extension not offered: fall back below
        try:
            sftp.rename(part, final)
        except OSError:
            sftp.remove(final)  # SFTP v3 rename refuses an existing target
            sftp.rename(part, final)

    @staticmethod
    def _makedirs(sftp: SftpClient, directory: str) -> None:
        parts = [p for p in directory.split("/") if p and p != "."]
        prefix = "/" if directory.startswith("/") else ""
        for i in range(len(parts)):
            path = prefix + "/".join(parts[: i + 1])
            try:
                sftp.stat(path)
            except OSError:
                sftp.mkdir(path, 0o750)
