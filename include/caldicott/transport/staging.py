"""A Sender that stages an (already encrypted) file for a named person to upload by hand.

Used where the receiving service has no API: the monthly data set goes to NHS England through the SDCS
Cloud portal, a web portal with named users. The release gateway still decides whether the bytes may
"leave" (protection ``STAGED_ENCRYPTED``); this sender writes them to the staging folder the submitter
can read, as ``name.part`` then renamed (a reader never sees half a file), mode 0600.

``already_delivered`` compares the checksum of a staged file with the item's, so a crash between
writing and the ledger's ``sent`` is reconciled instead of staging twice.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from caldicott.transport.base import Outbound, TransportError


class StagingSender:
    channel = "staging"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, item: Outbound) -> Path:
        name = item.headers.get("filename") or f"{item.item_id}.bin"
        if "/" in name or name.startswith("."):
            raise TransportError("staging filename must be a plain file name", retryable=False)
        sub = item.address.strip("/") if item.address else ""
        if ".." in sub.split("/"):
            raise TransportError("staging address must stay inside the staging folder", retryable=False)
        return self.root / sub / name

    def send(self, item: Outbound) -> str:
        path = self._path(item)
        try:
            write_atomically(path, item.payload, mode=0o600, dir_mode=0o700)
        except OSError as exc:
            raise TransportError(f"staging write failed: {type(exc).__name__}") from exc
        return str(path)

    def already_delivered(self, item: Outbound) -> str | None:
        path = self._path(item)
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == item.checksum:
            return str(path)
        return None


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Write ``data`` to ``path`` so a reader sees no file or the whole file, never part of one.

    Writes ``name.part`` (created with ``mode``, fsynced), then renames it over ``path``. On failure the
    ``.part`` is removed, so a full disk leaves nothing behind. Shared by every sender that delivers to a
    local folder (staging, print-and-post, disclosure outbox). Raises OSError.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    part = path.with_name(path.name + ".part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        part.replace(path)
    except OSError:
        part.unlink(missing_ok=True)
        raise
