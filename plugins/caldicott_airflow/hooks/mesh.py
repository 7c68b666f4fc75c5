"""``MeshHook``: a ``mesh_client.MeshClient`` from an Airflow connection (default ``caldicott_mesh``).

Connection fields: ``host`` = the MESH base URL (``https://msg.int.spine2.ncrs.nhs.uk`` in integration,
``https://127.0.0.1:<port>`` for the local sandbox), ``login`` = mailbox id, ``password`` = mailbox
password. Extras: ``shared_key`` (the environment's HMAC key), ``ca_file`` (CA bundle that verifies the
server: always a file, never ``verify=False``), ``client_cert`` / ``client_key`` (the mailbox's TLS
client certificate and key, paths), ``connections`` (how many connections :meth:`MeshHook.sender` opens to
send in parallel; default 4), ``max_chunk_bytes`` (messages larger than this are sent in chunks of this size;
default and maximum the MESH API's 100 MB limit, :data:`caldicott.transport.mesh.MAX_CHUNK_BYTES`). Example::

    AIRFLOW_CONN_CALDICOTT_MESH='{"conn_type": "mesh", "host": "https://127.0.0.1:8700", "login": "X26ABC1",
      "password": "...", "extra": {"shared_key": "...", "ca_file": "/etc/caldicott/mesh-ca.pem",
      "client_cert": "/etc/caldicott/mesh.crt", "client_key": "/etc/caldicott/mesh.key"}}'
"""

from __future__ import annotations

from airflow.sdk import BaseHook

DEFAULT_CONNECTIONS = 4


class MeshHook(BaseHook):
    conn_name_attr = "mesh_conn_id"
    default_conn_name = "caldicott_mesh"
    conn_type = "mesh"
    hook_name = "MESH (NHS England)"

    def __init__(self, mesh_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mesh_conn_id = mesh_conn_id
        self._client = None
        self._extra: list = []

    def settings(self):
        from caldicott.transport.mesh import MeshSettings

        conn = self.get_connection(self.mesh_conn_id)
        extra = conn.extra_dejson or {}
        if not extra.get("shared_key"):
            raise ValueError(f"connection {self.mesh_conn_id!r} has no shared_key extra")
        chunk = {"max_chunk_bytes": int(extra["max_chunk_bytes"])} if extra.get("max_chunk_bytes") else {}
        return MeshSettings(url=conn.host, mailbox=conn.login, password=conn.password or "",
                            shared_key=extra["shared_key"], ca_file=extra.get("ca_file"),
                            cert_file=extra.get("client_cert"), key_file=extra.get("client_key"), **chunk)

    def get_conn(self):
        """An open MeshClient (handshake done); close it with :meth:`close` or use the hook in ``with``."""
        if self._client is None:
            from caldicott.transport.mesh import make_client

            self._client = make_client(self.settings())
            self._client.handshake()
        return self._client

    def sender(self, workflow_id: str, connections: int | None = None):
        """A :class:`~caldicott.transport.mesh.MeshSender` on :meth:`get_conn`'s client plus ``connections - 1``
        more to the same mailbox (extra ``connections``, default 4), so sends overlap the rendering of the next
        letters. All of them are closed by :meth:`close`."""
        from caldicott.transport.mesh import MeshSender, make_client

        client = self.get_conn()
        if connections is None:
            conn = self.get_connection(self.mesh_conn_id)
            connections = int((conn.extra_dejson or {}).get("connections", DEFAULT_CONNECTIONS))
        settings = self.settings()
        while len(self._extra) < max(1, connections) - 1:
            self._extra.append(make_client(settings))
        return MeshSender(client, workflow_id, extra_clients=list(self._extra),
                          max_chunk_bytes=settings.max_chunk_bytes)

    def close(self) -> None:
        extra, self._extra = self._extra, []
        for c in extra:
            c.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self):
        return self.get_conn()

    def __exit__(self, *exc) -> None:
        self.close()

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn()
            return True, "MESH handshake succeeded"
        except Exception as exc:
            return False, f"MESH handshake failed: {type(exc).__name__}"
        finally:
            self.close()
