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
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            part = path.with_name(path.name + ".part")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(item.payload)
                fh.flush()
                os.fsync(fh.fileno())
            part.replace(path)
        except OSError as exc:
            raise TransportError(f"staging write failed: {type(exc).__name__}") from exc
        return str(path)

    def already_delivered(self, item: Outbound) -> str | None:
        path = self._path(item)
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == item.checksum:
            return str(path)
        return None
