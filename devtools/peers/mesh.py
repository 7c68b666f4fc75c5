"""NHS England's mesh-sandbox on 127.0.0.1, over mutual TLS, from its own virtual environment.

mesh-sandbox pins a FastAPI that Airflow cannot share, so it runs from ``.venv-mesh`` (``make venv``
builds it from ``requirements-mesh.txt``) as ``uvicorn mesh_sandbox.api:app --host 127.0.0.1`` with
``STORE_MODE=memory``, ``AUTH_MODE=full`` (the NHSMESH HMAC header is checked against ``SHARED_KEY``) and
TLS: a throw-away CA made here signs the server's certificate (for IP 127.0.0.1) and the client's, and
uvicorn requires the client certificate, so the MESH connection is mutual TLS as in production. Clients
verify the server with the CA **file** (DESIGN.md: ``verify=False`` breaks when ``REQUESTS_CA_BUNDLE`` is set).

Mailboxes (mesh_sandbox/store/data/mailboxes.jsonl): X26ABC1 (Caldicott, the sender), X26ABC2 (the GP
practices' mailbox in the synthetic data), X26ABC3 (referrers); password ``password``. The sandbox has no
workflow permissions and no GP routing of its own: :mod:`devtools.peers.mesh_routing` wraps it so a GP Connect
``GPPROVIDER_<NHS number>_<birth date>_<surname>`` address reaches the GP mailbox (or the one ``gp_routes`` names
for an NHS number), as MESH's registered-practice routing would; :meth:`MeshPeer.routed` lists the addresses
routed. ``mailboxes`` adds mailboxes to the sandbox's canned three (password ``password``): the demo and the e2e
fixture pass the receiving providers' (``devtools/providers.py``, from the records source), so transfer-of-care
reports to them are delivered. ``airflow_env()`` gives ``AIRFLOW_CONN_CALDICOTT_MESH``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from caldicott.crypto.keys import private_dir, write_private
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.airflow_env import free_port
from devtools.paths import ROOT
from devtools.stack import stop_process_groups

CONN_ID = "caldicott_mesh"
SENDER_MAILBOX, GP_MAILBOX, REFERRER_MAILBOX = "X26ABC1", "X26ABC2", "X26ABC3"
PASSWORD = "password"  # noqa: S105 - the sandbox's published test password
MESH_VENV = ROOT / ".venv-mesh"


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files (0600, folder 0700)."""
    private_dir(folder)
    paths = {k: str(folder / f"{k}.pem") for k in ("ca", "server", "server_key", "client", "client_key")}
    if all(Path(p).exists() for p in paths.values()):
        return paths
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Caldicott local MESH test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, server: bool):
        key = _key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    s_key, s_cert = leaf("127.0.0.1", True)
    c_key, c_cert = leaf("caldicott-mesh-client", False)
    for name, data in (("ca", ca.public_bytes(serialization.Encoding.PEM)),
                       ("server", s_cert.public_bytes(serialization.Encoding.PEM)),
                       ("client", c_cert.public_bytes(serialization.Encoding.PEM)),
                       ("server_key", _pem_key(s_key)), ("client_key", _pem_key(c_key))):
        write_private(Path(paths[name]), data)
    return paths


class MeshPeer:
    """``with MeshPeer(folder) as mesh: mesh.settings(mesh.GP_MAILBOX)`` → a running sandbox."""

    name = "mesh"
    GP_MAILBOX = GP_MAILBOX
    SENDER_MAILBOX = SENDER_MAILBOX

    def __init__(self, root: Path, port: int | None = None, shared_key: str = "TestKey",
                 gp_routes: dict[str, str] | None = None, mailboxes: list[str] | tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.mailboxes = [m for m in mailboxes if m not in (SENDER_MAILBOX, GP_MAILBOX, REFERRER_MAILBOX)]
        self.port = port or free_port()
        self.shared_key = shared_key
        self.gp_routes = dict(gp_routes or {})
        self.routing_log = self.root / "routing.jsonl"
        self.proc: subprocess.Popen | None = None
        self.tls = make_tls(self.root / "tls")
        self.url = f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> MeshPeer:
        uvicorn = MESH_VENV / "bin" / "uvicorn"
        if not uvicorn.exists():
            raise RuntimeError(f"{uvicorn} missing: run `make venv` (mesh-sandbox lives in its own venv)")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
        env.update({"STORE_MODE": "memory", "AUTH_MODE": "full", "SHARED_KEY": self.shared_key,
                    "ENV": "local", "MAILBOXES_DATA_DIR": str(self.root / "store"),
                    "MESH_GPPROVIDER_MAILBOX": GP_MAILBOX, "MESH_GPPROVIDER_ROUTES": json.dumps(self.gp_routes),
                    "MESH_ROUTING_LOG": str(self.routing_log), "MESH_EXTRA_MAILBOXES": ",".join(self.mailboxes)})
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "mesh-sandbox.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(uvicorn), "mesh_routing:create_app", "--factory", "--app-dir", str(Path(__file__).parent),
             "--host", "127.0.0.1", "--port", str(self.port),
             "--ssl-keyfile", self.tls["server_key"], "--ssl-certfile", self.tls["server"],
             "--ssl-ca-certs", self.tls["ca"], "--ssl-cert-reqs", "2", "--log-level", "warning",
             "--no-access-log"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.root))
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        ctx.load_cert_chain(self.tls["client"], self.tls["client_key"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mesh-sandbox exited with {self.proc.returncode}; see {self.root}/mesh-sandbox.log")
            try:
                with urllib.request.urlopen(f"{self.url}/health", context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"mesh-sandbox did not start in {timeout}s; see {self.root}/mesh-sandbox.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_groups([self.proc], grace=15)
        self.proc = None

    def __enter__(self) -> MeshPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settings(self, mailbox: str = SENDER_MAILBOX):
        from caldicott.transport.mesh import MeshSettings

        return MeshSettings(url=self.url, mailbox=mailbox, password=PASSWORD, shared_key=self.shared_key,
                            ca_file=self.tls["ca"], cert_file=self.tls["client"], key_file=self.tls["client_key"])

    def client(self, mailbox: str = SENDER_MAILBOX):
        from caldicott.transport.mesh import make_client

        return make_client(self.settings(mailbox))

    def connection(self, mailbox: str = SENDER_MAILBOX) -> dict:
        return {"conn_type": "mesh", "host": self.url, "login": mailbox, "password": PASSWORD,
                "extra": {"shared_key": self.shared_key, "ca_file": self.tls["ca"], "client_cert": self.tls["client"],
                          "client_key": self.tls["client_key"]}}

    def routed(self) -> list[dict]:
        """The registered-practice routing addresses senders used, in order (``mex_to``, ``mailbox``)."""
        if not self.routing_log.exists():
            return []
        return [json.loads(line) for line in self.routing_log.read_text(encoding="utf-8").splitlines() if line]

    def airflow_env(self) -> dict[str, str]:
        return {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(self.connection())}

    def non_delivery_report(self, message_id: str, local_id: str, workflow_id: str,
                            mailbox: str = SENDER_MAILBOX) -> None:
        """Play MESH's central system: put an NDR for ``message_id`` in ``mailbox`` (the sandbox's admin API)."""
        client = self.client(mailbox)
        try:
            resp = client._session.post(f"{self.url}/messageexchange/admin/report", timeout=30, json={
                "mailbox_id": mailbox, "code": "14", "description": "undelivered", "workflow_id": workflow_id,
                "local_id": local_id, "linked_message_id": message_id, "status": "undeliverable"})
            resp.raise_for_status()
        finally:
            client.close()


def start_for_demo(workdir: Path, records_db: Path | None = None) -> MeshPeer:
    """The sandbox, with a mailbox for every receiving provider on MESH in the records source ``records_db``."""
    from devtools.providers import mesh_mailboxes, receiving_providers

    return MeshPeer(Path(workdir) / "mesh", mailboxes=mesh_mailboxes(receiving_providers(records_db))).start()
