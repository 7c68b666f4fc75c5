"""Print-and-post batch sender: each posted copy becomes a file in the day's batch folder, encrypted at
rest (DER EnvelopedData to the print house's certificate, see :func:`caldicott.letters.messages.post_file`).

The batch folder is a staging area a named person (or a later SFTP step to the print house) takes the
batch from; files are written as ``<item>.pdf.p7m.part`` then renamed, so nobody ever sees half a file,
and an item's file existing *is* its delivery: :meth:`already_delivered` looks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from caldicott.transport.base import Outbound, TransportError

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
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(item.payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(part, target)
        except OSError as exc:
            raise TransportError(f"item {item.item_id}: staging write failed ({type(exc).__name__})") from exc
        return str(target.relative_to(self.root))

    def already_delivered(self, item: Outbound) -> str | None:
        target = self.path(item)
        return str(target.relative_to(self.root)) if target.exists() else None
