"""CMS (PKCS #7) EnvelopedData for whole files, DER-encoded: ``file.csv`` -> ``file.csv.p7m``.

Used where a file travels to a recipient that holds a certificate (a referrer's contract, a disclosure
package): the file is encrypted with AES-256 to the recipient's RSA certificate, so it is unreadable on
the recipient's landing server until their own key opens it. ``openssl cms -decrypt -inform DER -in
file.p7m -recip cert.pem -inkey key.pem`` reads the output. (E-mail S/MIME is :mod:`caldicott.crypto.smime`.)
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from caldicott.crypto.keys import load_certificate, load_private_key

SUFFIX = ".p7m"


def encrypt_file(data: bytes, certificate_pem: str | bytes) -> bytes:
    """``data`` as DER EnvelopedData to the certificate's RSA key (AES-256). Raises CertificateError."""
    cert = load_certificate(certificate_pem)
    return (pkcs7.PKCS7EnvelopeBuilder().set_data(data).add_recipient(cert)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary]))


def decrypt_file(der: bytes, certificate_pem: str | bytes, key_pem: str | bytes) -> bytes:
    """The recipient's side (tests and the demo's peers): open a DER envelope."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certificate_pem.encode() if isinstance(certificate_pem, str)
                                          else certificate_pem)
    return pkcs7.pkcs7_decrypt_der(der, cert, load_private_key(key_pem), [])
