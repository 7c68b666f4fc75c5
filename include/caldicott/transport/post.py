"""Print-and-post batch sender: each posted copy becomes a file in the day's batch folder, encrypted at
rest (DER EnvelopedData to the print house's certificate, see :func:`caldicott.letters.messages.post_file`).

The batch folder is a staging area a named person (or a later SFTP step to the print house) takes the
batch from; files are written as ``<item>.pdf.p7m.part`` then renamed, so nobody ever sees half a file,
and an item's file existing *is* its delivery: :meth:`already_delivered` looks for it.
"""

from __future__ import annotations

from pathlib import Path

from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.staging import write_atomically

SUFFIX = ".pdf.p7m"


class StagedPostSender:
    channel = "post-staging"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, item: Outbound) -> Path:
        batch = item.headers.get("batch", "batch")
        return self.root / batch / f"{item.item_id}{SUFFIX}"

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
