"""Airflow-side configuration of the monthly data set: key, folders, NDOP transport, staging sender.

Configuration (README / docs/monthly_dataset.md):

* data set key: connection ``caldicott_dataset_key`` (its password: base64 AES-256 key), else the environment
  variable ``CALDICOTT_DATASET_KEY``; nothing configured → the task fails (no unencrypted fallback);
* work folder: ``CALDICOTT_DATASET_DIR``, else ``$CALDICOTT_OUTPUT_DIR/monthly_dataset``;
* staging folder the named submitter reads: ``CALDICOTT_STAGING_DIR``, else ``$CALDICOTT_OUTPUT_DIR/staging``;
* NDOP check: MESH connection ``caldicott_mesh`` and the service's mailbox ``CALDICOTT_NDOP_MAILBOX`` (differs by
  environment); or, for local runs only, ``CALDICOTT_NDOP_TEST_DOUBLE=<folder>`` (a file-backed test double,
  which every output then says answered the check).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

KEY_CONN_ID = os.environ.get("CALDICOTT_DATASET_KEY_CONN_ID", "caldicott_dataset_key")


def _output_dir() -> Path:
    return Path(os.environ.get("CALDICOTT_OUTPUT_DIR", "outputs"))


def dataset_key() -> bytes:
    from caldicott.dataset.writer import load_key

    value = None
    with contextlib.suppress(Exception):  # no such connection: fall back to the environment
        from airflow.sdk import BaseHook

        value = BaseHook.get_connection(KEY_CONN_ID).password or None
    return load_key(value)


def settings(params: dict):
    from caldicott.dataset.pipeline import Settings

    work = Path(os.environ.get("CALDICOTT_DATASET_DIR") or _output_dir() / "monthly_dataset")
    return Settings(work_dir=work, key=dataset_key(), version=str(params.get("version") or "2.1"),
                    org_provider=params.get("org_provider") or "ZZZ01",
                    org_submitter=params.get("org_submitter") or None,
                    pre2020=params.get("pre2020_objection") or "referrals_before_cutover",
                    intermediate_db=bool(params.get("intermediate_db", True)),
                    submitter=params.get("submitter") or "named-submitter",
                    commissioner=params.get("commissioner") or "commissioner")


def staging_sender():
    from caldicott.transport.staging import StagingSender

    return StagingSender(Path(os.environ.get("CALDICOTT_STAGING_DIR") or _output_dir() / "staging"))


@contextlib.contextmanager
def ndop_transport():
    """Yields ``(transport, label)``; the label goes into the opt-out statement."""
    double = os.environ.get("CALDICOTT_NDOP_TEST_DOUBLE")
    if double:
        from caldicott.policy.ndop import FakeNdopService

        log.warning("NDOP check answered by a TEST DOUBLE (CALDICOTT_NDOP_TEST_DOUBLE); not for production")
        root = Path(double)
        listed = root / "opted_out.txt"
        opted = listed.read_text().split() if listed.exists() else []
        yield FakeNdopService(root, opted_out=opted), "test double (CALDICOTT_NDOP_TEST_DOUBLE)"
        return
    mailbox = os.environ.get("CALDICOTT_NDOP_MAILBOX")
    if not mailbox:
        raise RuntimeError("no NDOP service mailbox configured (CALDICOTT_NDOP_MAILBOX)")
    from caldicott.policy.ndop import MeshNdopTransport

    from caldicott_airflow.hooks.mesh import MeshHook

    hook = MeshHook()
    try:
        yield MeshNdopTransport(hook.get_conn(), mailbox), f"MESH {mailbox} (SPINE_NTT_UPHOLDING)"
    finally:
        hook.close()
