"""Key and certificate loading, self-signed identities for the demo's synthetic peers, and the one way key
material is written to disk (:func:`write_private`).

Production certificates come from the records source (a GP practice's encryption certificate) or from
an Airflow connection / secrets backend (Caldicott's own keys). Nothing here reads key material from
the source tree: a test greps the tree for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


class CertificateError(ValueError):
    """A certificate is missing, unreadable, expired or not usable for encryption (message has no PII)."""


@dataclass(frozen=True)
class Identity:
    """A private key and its certificate, both PEM. Used for the synthetic peers of the demo."""

    key_pem: bytes
    cert_pem: bytes


def make_identity(common_name: str, *, days: int = 3650, key_size: int = 2048) -> Identity:
    """A fresh RSA key and a self-signed certificate for ``common_name`` (demo and tests only)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Identity(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )


def cached_identity(keys_dir: Path, name: str) -> Identity:
    """The identity stored as ``keys_dir/name.key`` and ``.crt``, made on first use.

    RSA keys cannot be derived from a seed, so the generator caches them: re-seeding the demo keeps
    each synthetic practice's key, and the practice's "own" private key stays outside the records DB.
    """
    private_dir(keys_dir)
    key_path, cert_path = keys_dir / f"{name}.key", keys_dir / f"{name}.crt"
    if key_path.exists() and cert_path.exists():
        return Identity(key_pem=key_path.read_bytes(), cert_pem=cert_path.read_bytes())
    ident = make_identity(name)
    write_private(key_path, ident.key_pem)
    cert_path.write_bytes(ident.cert_pem)
    return ident


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), made if missing, tightened if it was looser.

    A key file's own mode is not enough while its folder lets others list it and watch it being replaced."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write secret bytes (a private key, a symmetric key, a password) readable by the owner only, from the
    first byte: the file is created 0600 by ``os.open`` (``O_EXCL``, under a fresh name, so the mode of a file
    already there is never inherited), filled, then renamed over ``path``. Its folder is made 0700.

    Writing first and ``chmod`` after (or ``Path.write_bytes``) leaves the key world-readable under the
    default umask until the ``chmod``; the rename also means a reader never sees half a key.
    """
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def load_certificate(pem: str | bytes | None, *, at: dt.datetime | None = None) -> x509.Certificate:
    """Parse a PEM certificate and check it can be encrypted to now; raise CertificateError if not.

    The parsing and the key check are done once per certificate (:func:`_parsed`: a practice's certificate
    encrypts every letter of its batch, the print house's every posted copy); the validity period is checked on
    every call, against ``at`` or now."""
    if not pem:
        raise CertificateError("no certificate on record")
    cert, error = _parsed(pem.encode() if isinstance(pem, str) else bytes(pem))
    if error is not None:
        raise CertificateError(error)
    assert cert is not None
    now = at or dt.datetime.now(dt.UTC)
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise CertificateError("certificate is outside its validity period")
    return cert


@functools.lru_cache(maxsize=256)
def _parsed(data: bytes) -> tuple[x509.Certificate | None, str | None]:
    """``(certificate, None)``, or ``(None, why it cannot be used)``: what does not change with time, per PEM."""
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return None, "certificate is not valid PEM"
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        return None, "certificate key is not RSA (S/MIME envelopes need RSA recipients)"
    return cert, None


def load_private_key(pem: str | bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """Parse a PEM private key (from a connection or secrets backend)."""
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=password)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError("private key is not RSA")
    return key
