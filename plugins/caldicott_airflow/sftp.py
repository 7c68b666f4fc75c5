"""Airflow adapter for SFTP delivery: an Airflow connection -> :class:`caldicott.transport.sftp.SftpSender`.

The connection (``AIRFLOW_CONN_CALDICOTT_SFTP_REFERRER`` in the demo, one per referrer in production) is
read and opened by the provider's ``SFTPHook``; this module adds what the hook does not enforce:

* a pinned host key is **required** (``host_key`` in the extras); ``no_host_key_check`` or
  ``allow_host_key_change`` is refused, so nothing is sent to an unverified peer;
* after connecting, the key the server actually presented is compared with the pinned one (the hook
  also loads the worker's ``~/.ssh/known_hosts``, which must not widen what is trusted);
* the hook's own connection retries are turned off: Airflow's task retries (with backoff) own that;
* SSH compression is off whatever the extras say (the hook's default is on): what goes over SFTP is already
  compressed or encrypted (PDFs, encrypted archives, encrypted posted copies), so zlib spent CPU at both ends
  for nothing.

Optional extras: ``create_dirs`` (``"true"`` creates the remote directory), ``file_mode`` (octal, default
``0640``), ``conn_timeout`` (seconds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from caldicott.transport.sftp import (
    DEFAULT_FILE_MODE,
    HostKeyError,
    SftpClient,
    SftpSender,
    parse_host_key,
)


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def sftp_sender(conn_id: str, *, peer: str) -> SftpSender:
    """A sender for the Airflow connection ``conn_id``; ``peer`` (a contract id) names it in messages."""
    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(conn_id).extra_dejson or {}
    if _flag(extra.get("no_host_key_check")) or _flag(extra.get("allow_host_key_change")):
        raise HostKeyError(f"{peer}: connection {conn_id} disables host key checking; refusing to send")
    if not extra.get("host_key"):
        raise HostKeyError(f"{peer}: connection {conn_id} has no pinned host_key; refusing to send")
    pinned = parse_host_key(str(extra["host_key"]))

    @contextlib.contextmanager
    def connect() -> Iterator[SftpClient]:
        from airflow.providers.sftp.hooks.sftp import SFTPHook

        hook = SFTPHook(ssh_conn_id=conn_id, conn_retry_attempts=1)
        hook.compress = False   # incompressible payloads (see the module docs); read by the hook's get_conn
        try:
            sftp = hook.get_conn()
            presented = hook.client.get_transport().get_remote_server_key()
            if presented.get_name() != pinned.get_name() or presented.asbytes() != pinned.asbytes():
                raise HostKeyError(f"{peer}: host key CHANGED (does not match the pinned host_key); nothing sent")
        except BaseException:
            _close(hook)
            raise
        try:
            yield sftp
        finally:
            _close(hook)

    mode = int(str(extra.get("file_mode", "")), 8) if extra.get("file_mode") else DEFAULT_FILE_MODE
    return SftpSender(connect, peer=peer, file_mode=mode, create_dirs=_flag(extra.get("create_dirs")))


def _close(hook) -> None:
    with contextlib.suppress(Exception):
        hook.close_conn()
    with contextlib.suppress(Exception):
        if hook.client is not None:
            hook.client.close()
            hook.client = None
