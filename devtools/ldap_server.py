"""A throwaway OpenLDAP directory on loopback, for tests of directory sign-in (issue 14).

Debian's ``slapd`` started with a ``slapd.conf`` of its own in a working folder (never the system's
``/etc/ldap``), listening on ``ldaps://127.0.0.1:<free port>`` only, with a certificate from a CA made for
the run, anonymous binds refused, and the ``memberof`` overlay so that people carry ``memberOf`` as in
Active Directory. People, groups and a read-only service account are added over LDAP with ``ldapadd``
(so the overlay sees them). All names and passwords are synthetic; passwords are made per run.

``with LdapServer(workdir, people, groups) as d: ...`` — leaving the block stops ``slapd``.
``missing()`` says what is not installed (the tests skip with that reason). :class:`DirectoryStack` is an
:class:`~devtools.stack.AirflowStack` whose users sign in with their directory passwords (FAB auth manager).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from caldicott.crypto.keys import private_dir, write_private

from devtools.airflow_env import free_port
from devtools.stack import AirflowStack, stop_process_groups

SLAPD_CANDIDATES = ("/usr/sbin/slapd", "/usr/local/sbin/slapd")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib/x86_64-linux-gnu/ldap", "/usr/lib/aarch64-linux-gnu/ldap")


@dataclass(frozen=True)
class Person:
    """A synthetic directory user; ``groups`` are group ``cn``s."""

    uid: str
    groups: tuple[str, ...] = ()
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))


def slapd_binary() -> str | None:
    found = shutil.which("slapd")
    return found or next((p for p in SLAPD_CANDIDATES if os.access(p, os.X_OK)), None)


def missing() -> str | None:
    """Why a directory cannot be started here, or None."""
    if not slapd_binary():
        return "OpenLDAP's slapd is not installed (apt-get install slapd; .ci/run does)"
    for tool in ("ldapadd", "ldapmodify", "ldapwhoami"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install ldap-utils; .ci/run does)"
    if not any(Path(d, "back_mdb.la").exists() or Path(d, "back_mdb.so").exists() for d in MODULE_DIRS):
        return "slapd's mdb backend module was not found"
    return None


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, valid for a day. Returns (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Caldicott test directory CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    # the key first, 0600 from its first byte in a 0700 folder (write_bytes + chmod leaves a window world-readable)
    write_private(paths[2], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


class LdapServer:
    """A running slapd with ``people`` in ``ou=people`` and each of ``groups`` in ``ou=groups``."""

    def __init__(self, workdir: Path, people: list[Person], groups: list[str],
                 suffix: str = "dc=caldicott,dc=test") -> None:
        self.dir = Path(workdir).resolve()
        self.people = {p.uid: p for p in people}
        self.groups = groups
        self.suffix = suffix
        self.port = free_port()
        self.url = f"ldaps://127.0.0.1:{self.port}"
        self.root_dn = f"cn=admin,{suffix}"
        self.bind_dn = f"cn=airflow-bind,ou=services,{suffix}"
        self.bind_password = secrets.token_urlsafe(16)
        self._root_password = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen | None = None
        self.ca_file = self.dir / "ca.pem"

    # ---- names --------------------------------------------------------------------------------------------------
    @property
    def people_base(self) -> str:
        return f"ou=people,{self.suffix}"

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},{self.people_base}"

    def group_dn(self, cn: str) -> str:
        return f"cn={cn},ou=groups,{self.suffix}"

    def password(self, uid: str) -> str:
        return self.people[uid].password

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> LdapServer:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        private_dir(self.dir)                       # 0700 before anything secret is written into it
        private_dir(self.dir / "data")
        _, cert, key = _tls_files(self.dir)
        conf = self.dir / "slapd.conf"
        write_private(conf, self._slapd_conf(cert, key).encode())   # holds the root password
        self._client_env_files()
        log = open(self.dir / "slapd.log", "ab")  # noqa: SIM115 - closed with the process
        # -d keeps slapd in the foreground (no daemon to lose track of); 256 logs connections and operations.
        self.proc = subprocess.Popen([slapd_binary(), "-f", str(conf), "-h", f"{self.url}/", "-d", "256"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout)
            self._load()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_groups([self.proc], grace=15)
        self.proc = None

    def __enter__(self) -> LdapServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- internals ----------------------------------------------------------------------------------------------
    def _slapd_conf(self, cert: Path, key: Path) -> str:
        moddir = next(d for d in MODULE_DIRS if Path(d).is_dir())
        includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
        return f"""{includes}
modulepath {moddir}
moduleload back_mdb
moduleload memberof
pidfile {self.dir}/slapd.pid
argsfile {self.dir}/slapd.args
TLSCACertificateFile {self.ca_file}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
disallow bind_anon
require authc

database mdb
maxsize 16777216
suffix "{self.suffix}"
rootdn "{self.root_dn}"
rootpw {self._root_password}
directory {self.dir}/data
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by anonymous auth by self write by * none
access to * by dn.exact="{self.bind_dn}" read by self read by * none
"""

    def _client_env_files(self) -> None:
        (self.dir / "ldap.conf").write_text(f"TLS_CACERT {self.ca_file}\nTLS_REQCERT demand\n")
        # ldapadd -y reads the whole file: no trailing newline
        write_private(self.dir / "root.pw", self._root_password.encode())

    def client_env(self) -> dict[str, str]:
        """Environment for ldap-utils: this directory's CA only; no system or user ldap.conf."""
        return {**os.environ, "LDAPCONF": str(self.dir / "ldap.conf"), "LDAPRC": str(self.dir / "no-ldaprc")}

    def _ldap_tool(self, tool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([tool, "-x", "-H", self.url, "-D", self.root_dn, "-y", str(self.dir / "root.pw"), *args],
                              input=stdin, env=self.client_env(), capture_output=True, text=True, timeout=30,
                              check=False)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                res = self._ldap_tool("ldapwhoami")
                if res.returncode == 0:
                    return
                last = res.stderr
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise TimeoutError(f"slapd not ready in {timeout}s ({last.strip()}): {self._log_tail()}")

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change as the directory's administrator (``ldapmodify``), e.g. a group membership."""
        res = self._ldap_tool("ldapmodify", stdin=ldif)
        if res.returncode != 0:
            raise RuntimeError(f"ldapmodify failed: {res.stderr.strip()}")

    def remove_from_group(self, uid: str, group: str) -> None:
        self.modify(f"dn: {self.group_dn(group)}\nchangetype: modify\ndelete: member\nmember: {self.user_dn(uid)}\n")

    def _load(self) -> None:
        res = self._ldap_tool("ldapadd", stdin=self.ldif())
        if res.returncode != 0:
            raise RuntimeError(f"ldapadd failed: {res.stderr.strip()}")

    def _hash(self, password: str) -> str:
        slappasswd = Path(slapd_binary()).with_name("slappasswd")
        if slappasswd.exists():
            res = subprocess.run([str(slappasswd), "-h", "{SSHA}", "-T", "/dev/stdin"], input=password,
                                 capture_output=True, text=True, check=True, timeout=10)
            return res.stdout.strip()
        return password   # slapd also checks clear-text userPassword values

    def ldif(self) -> str:
        s = self.suffix
        dc = s.split(",")[0].split("=")[1]
        entries = [
            f"dn: {s}\nobjectClass: dcObject\nobjectClass: organization\no: Caldicott test directory\ndc: {dc}",
            *(f"dn: ou={ou},{s}\nobjectClass: organizationalUnit\nou: {ou}" for ou in ("people", "groups", "services")),
            f"dn: {self.bind_dn}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
            f"cn: airflow-bind\nuserPassword: {self._hash(self.bind_password)}",
        ]
        for p in self.people.values():
            entries.append(f"dn: {self.user_dn(p.uid)}\nobjectClass: inetOrgPerson\nuid: {p.uid}\ncn: {p.uid}\n"
                           f"givenName: {p.uid.rstrip('0123456789').title()}\nsn: Synthetic\n"
                           f"mail: {p.uid}@caldicott.test\nuserPassword: {self._hash(p.password)}")
        for g in self.groups:   # after the people, so the memberof overlay writes their memberOf
            members = [self.user_dn(p.uid) for p in self.people.values() if g in p.groups]
            if members:   # groupOfNames needs at least one member
                entries.append(f"dn: {self.group_dn(g)}\nobjectClass: groupOfNames\ncn: {g}\n"
                               + "\n".join(f"member: {m}" for m in members))
        return "\n\n".join(entries) + "\n"

    def _log_tail(self, lines: int = 20) -> str:
        path = self.dir / "slapd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class DirectoryStack(AirflowStack):
    """An Airflow (FAB auth manager) whose users sign in with their passwords in ``directory``.

    ``token(user)`` comes from ``POST /auth/token`` (FAB's route, which binds to the directory as that user);
    ``request()`` (the stack's) reaches paths outside ``/api/v2`` such as FAB's ``/auth/fab/v1/users``.
    """

    def __init__(self, env: dict[str, str], directory: LdapServer) -> None:
        super().__init__(env)
        self.directory = directory

    def login(self, username: str, password: str) -> tuple[int, dict]:
        """``POST /auth/token`` with a user name and password."""
        return self.request("POST", "/auth/token", {"username": username, "password": password})

    def token(self, user: str = "admin") -> str:
        if user not in self._tokens:
            status, body = self.login(user, self.directory.password(user))
            if status not in (200, 201):
                raise RuntimeError(f"{user} could not sign in: {status} {body}")
            self._tokens[user] = body["access_token"]
        return self._tokens[user]
