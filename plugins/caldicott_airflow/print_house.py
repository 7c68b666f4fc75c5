"""Airflow adapter for the print-and-post house: the ``caldicott_print`` connection -> a post sender.

* connection type ``sftp`` (host, port, login, password or key; extras ``host_key`` pinned as for referrers,
  ``remote_path`` the folder batches go under, ``certificate_path`` the print house's encryption
  certificate): each posted copy goes straight to the print house over SFTP
  (:class:`caldicott.transport.post.SftpPostSender`, through :func:`caldicott_airflow.sftp.sftp_sender`, which
  refuses a connection without a pinned host key);
* any other type with extras ``staging_dir`` and ``certificate_path``: the batch is written to a local
  folder (:class:`caldicott.transport.post.StagedPostSender`) for a named person or a later collection.
"""

from __future__ import annotations

from pathlib import Path

PEER = "print house"


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

        return SftpPostSender(sftp_sender(conn_id, peer=PEER), str(extra.get("remote_path") or "/")), cert
    if not extra.get("staging_dir"):
        raise ValueError(f"connection {conn_id} is neither an SFTP connection nor has a staging_dir")
    return StagedPostSender(extra["staging_dir"]), cert
