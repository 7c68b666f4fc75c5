"""A staging sender: writes the CMS-encrypted disclosure package to an outbox directory.

Used where the requester has no S/MIME mailbox or SFTP landing area Caldicott can reach (most courts,
police forces and solicitors): a named person sends the file from the outbox by the route the requester
agreed (secure e-mail portal, encrypted removable media). The file is the CMS envelope to the requester's
certificate, so the outbox holds nothing readable. Writes ``name.part`` then renames it, so a person or
script watching the outbox never sees half a file; ``already_delivered`` checks the checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.staging import write_atomically


class OutboxSender:
    channel = "outbox"

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def _path(self, item: Outbound) -> Path:
        name = item.headers.get("filename") or f"{item.item_id}.p7m"
        if "/" in name or name.startswith("."):
            raise TransportError("unsafe file name for the outbox", retryable=False)
        return self.directory / item.item_id / name

    def send(self, item: Outbound) -> str:
        path = self._path(item)
        try:
            write_atomically(path, item.payload, mode=0o640, dir_mode=0o750)
        except OSError as exc:
            raise TransportError(f"outbox write failed: {type(exc).__name__}") from None
        return str(path.relative_to(self.directory))

    def already_delivered(self, item: Outbound) -> str | None:
        path = self._path(item)
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == item.checksum:
            return str(path.relative_to(self.directory))
        return None
