"""Where the disclosure flow gets its configuration: outputs, outbox, senders, pseudonym key, opt-outs.

* Output folder: ``CALDICOTT_OUTPUT_DIR`` (letters under ``disclosures/<id>/``).
* Outbox (channel ``outbox``): ``CALDICOTT_DISCLOSURE_OUTBOX``, default ``<output dir>/disclosure-outbox``.
* Pseudonymisation key for research extracts: the password of connection ``caldicott_pseudonym_key``, or
  ``CALDICOTT_PSEUDONYM_KEY``; at least 16 bytes. Without one, research extracts are not built.
* National data opt-out for research extracts: ``CALDICOTT_NDOP_OPTED_OUT_FILE`` (opted-out NHS numbers, one
  a line, from the latest NDOP check, kept no longer than the NDOP rules allow). Without one, research
  extracts are not built: the opt-out is never assumed to be empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from caldicott.disclosure.request import DisclosureRequest


class ConfigMissing(RuntimeError):
    """A setting the flow needs is absent; the message names the setting."""


def output_dir() -> Path:
    return Path(os.environ.get("CALDICOTT_OUTPUT_DIR", "outputs"))


def outbox_dir() -> Path:
    return Path(os.environ.get("CALDICOTT_DISCLOSURE_OUTBOX") or output_dir() / "disclosure-outbox")


def sender_for(req: DisclosureRequest):
    """The sender for the request's channel. Only the outbox is wired in this deployment."""
    if req.channel == "outbox":
        from caldicott.disclosure.outbox import OutboxSender

        return OutboxSender(outbox_dir())
    raise ConfigMissing(f"channel {req.channel} is not configured for disclosures here; use outbox")


def pseudonym_key() -> bytes | None:
    try:
        from airflow.sdk import BaseHook

        pw = BaseHook.get_connection("caldicott_pseudonym_key").password
        if pw:
            return pw.encode()
    except Exception as exc:  # absent connection: fall back to the environment
        import logging

        logging.getLogger(__name__).debug("no caldicott_pseudonym_key connection (%s)", type(exc).__name__)
    key = os.environ.get("CALDICOTT_PSEUDONYM_KEY")
    return key.encode() if key else None


def ndop_source() -> set[str] | None:
    path = os.environ.get("CALDICOTT_NDOP_OPTED_OUT_FILE")
    if not path:
        return None
    return {line.strip().rstrip(",") for line in Path(path).read_text().splitlines() if line.strip()}
