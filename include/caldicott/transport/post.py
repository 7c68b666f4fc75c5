"""Print-and-post batch senders: each posted copy is one file in the day's batch folder, encrypted at rest
(DER EnvelopedData to the print house's certificate, see :func:`caldicott.letters.messages.post_file`).

Two ways to hand the batch to the print house, chosen by the ``caldicott_print`` connection:

* :class:`SftpPostSender` (connection type ``sftp``): straight to the print house's SFTP server, each file
  uploaded as ``.part``, verified by checksum and renamed (:class:`caldicott.transport.sftp.SftpSender`), into
  ``<remote_path>/<batch>/``; the print house picks up whole files only.
* :class:`StagedPostSender` (``staging_dir``): a local folder a named person (or the print house's own
  collection) takes the batch from, files written as ``.part`` then renamed.

Either way the batch is one folder per day and patient-copy channel, one file per letter named by its
ledger item id, and an item's file existing with the right checksum *is* its delivery:
``already_delivered`` looks for it, so a re-run after a crash never posts a letter twice.
"""

from __future__ import annotations

import dataclasses
import posixpath
from pathlib import Path

from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.sftp import SftpSender
from caldicott.transport.staging import write_atomically

SUFFIX = ".pdf.p7m"


def file_name(item: Outbound) -> str:
    return f"{item.item_id}{SUFFIX}"


def batch_folder(item: Outbound) -> str:
    """The batch's folder name (``<run>/patient/post`` flattened; no patient data, only the run and channel)."""
    return item.headers.get("batch", "batch").replace("/", "_")


class StagedPostSender:
    channel = "post-staging"
    reconcilable = True   # the staged file is the delivery: already_delivered can say what arrived

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, item: Outbound) -> Path:
        batch = item.headers.get("batch", "batch")
        return self.root / batch / file_name(item)

    def send(self, item: Outbound) -> str:
        target = self.path(item)
        try:
            write_atomically(target, item.payload, mode=0o600, dir_mode=0o700)
        except OSError as exc:
            raise TransportError(f"item {item.item_id}: staging write failed ({type(exc).__name__})") from exc
        return str(target.relative_to(self.root))

    def already_delivered(self, item: Outbound) -> str | None:
        target = self.path(item)
        return str(target.relative_to(self.root)) if target.exists() else None

    def close(self) -> None:
        """Nothing to close (a folder); present so every post sender is used the same way."""


class SftpPostSender:
    """Posted copies over SFTP to the print house: ``<remote_dir>/<batch>/<item>.pdf.p7m``, atomically.

    Wraps an :class:`SftpSender` (pinned host key, ``.part`` + checksum + rename, one SSH connection for
    the batch). One upload at a time on that connection (``concurrency`` 1); reconcilable because the
    final file's checksum says whether a letter arrived.
    """

    channel = "post-sftp"
    reconcilable = True
    concurrency = 1

    def __init__(self, sftp: SftpSender, remote_dir: str = "/") -> None:
        self.sftp = sftp
        self.sftp.create_dirs = True   # a new batch folder every day
        self.remote_dir = remote_dir or "/"

    def _remote(self, item: Outbound) -> Outbound:
        return dataclasses.replace(item, address=posixpath.join(self.remote_dir, batch_folder(item)),
                                   headers={**item.headers, "filename": file_name(item)})

    def send(self, item: Outbound) -> str:
        return self.sftp.send(self._remote(item))

    def already_delivered(self, item: Outbound) -> str | None:
        return self.sftp.already_delivered(self._remote(item))

    def close(self) -> None:
        self.sftp.close()

    def __enter__(self) -> SftpPostSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
