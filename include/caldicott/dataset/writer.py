"""Write the submission: one Parquet file per table + ``manifest.json`` (+ the intermediate database), in
one archive, encrypted at rest.

The archive is a ZIP (``IDS000Header.parquet`` ..., ``manifest.json`` with row counts and sha256 per member,
optionally ``intermediate.sqlite`` holding the same tables under their physical names, for loading into
NHS England's intermediate database). It is built in memory and only its encrypted form touches the
disk: AES-256-GCM with a key from configuration (an Airflow connection or ``CALDICOTT_DATASET_KEY``,
base64 of 32 bytes), random 96-bit nonce, the file header as associated data::

    b"CALDDS1\\n" | key id (8 bytes: first 8 of sha256(key)) | nonce (12) | ciphertext+tag

The named submitter decrypts with ``python -m caldicott.dataset.writer decrypt FILE OUT.zip`` and the same
key before uploading through the SDCS Cloud portal. Parquet keeps types and nulls exactly (loss-free).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sqlite3
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from caldicott.dataset.builder import COLUMNS, Dataset

MAGIC = b"CALDDS1\n"
KEY_ENV = "CALDICOTT_DATASET_KEY"


class DatasetKeyError(ValueError):
    """The data set key is missing or malformed (the message never contains the key)."""


def load_key(value: str | bytes | None = None) -> bytes:
    """The 32-byte AES key: ``value`` (base64) or ``$CALDICOTT_DATASET_KEY``."""
    raw = value if value is not None else os.environ.get(KEY_ENV)
    if not raw:
        raise DatasetKeyError(f"no data set encryption key configured (set {KEY_ENV} or the connection's password)")
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise DatasetKeyError("data set key is not base64") from exc
    if len(key) != 32:
        raise DatasetKeyError("data set key must be 32 bytes (AES-256)")
    return key


def new_key() -> str:
    """A fresh base64 key, for setting up a deployment (``python -m caldicott.dataset.writer new-key``)."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:8]


def encrypt(data: bytes, key: bytes) -> bytes:
    nonce = os.urandom(12)
    head = MAGIC + key_id(key) + nonce
    return head + AESGCM(key).encrypt(nonce, data, head)


def decrypt(blob: bytes, key: bytes) -> bytes:
    if not blob.startswith(MAGIC):
        raise ValueError("not a Caldicott data set archive")
    head = blob[: len(MAGIC) + 20]
    if head[len(MAGIC): len(MAGIC) + 8] != key_id(key):
        raise ValueError("archive was encrypted with a different key")
    return AESGCM(key).decrypt(head[-12:], blob[len(head):], head)


def _arrow(df: pd.DataFrame, name: str) -> pa.Table:
    cols = COLUMNS[name]
    return pa.Table.from_pandas(df[cols], preserve_index=False)


def table_bytes(df: pd.DataFrame, name: str) -> bytes:
    buf = io.BytesIO()
    pq.write_table(_arrow(df, name), buf, compression="zstd")
    return buf.getvalue()


def intermediate_db(ds: Dataset) -> bytes:
    """The tables as a SQLite database with the physical names (the intermediate database's shape)."""
    with tempfile.TemporaryDirectory(prefix="caldicott-ids-") as tmp:
        path = Path(tmp) / "intermediate.sqlite"
        con = sqlite3.connect(path)
        try:
            con.execute("PRAGMA journal_mode=OFF")
            con.execute("PRAGMA synchronous=OFF")
            for name, cols in COLUMNS.items():
                df = ds.tables[name][cols]
                con.execute(f'CREATE TABLE "{name}" ({", ".join(f"{c!r}" for c in cols)})'.replace("'", '"'))
                out = pd.DataFrame({c: _sqlite_values(df[c]) for c in cols})
                marks = ", ".join("?" for _ in cols)
                con.executemany(f'INSERT INTO "{name}" VALUES ({marks})', out.itertuples(index=False, name=None))
            con.commit()
        finally:
            con.close()
        return path.read_bytes()


def _sqlite_values(s: pd.Series) -> pd.Series:
    if s.dtype.kind == "M":
        fmt = "%Y-%m-%d %H:%M:%S" if (s.dropna().dt.normalize() != s.dropna()).any() else "%Y-%m-%d"
        v = s.dt.strftime(fmt)
    else:
        v = s
    return v.astype(object).where(v.notna(), None)


@dataclass(frozen=True)
class Written:
    path: Path
    sha256: str            # of the encrypted file (what the ledger records as leaving)
    size: int
    manifest: dict


def archive_bytes(ds: Dataset, *, with_intermediate_db: bool = True, extra: dict | None = None) -> tuple[bytes, dict]:
    """The plaintext ZIP and its manifest (kept in memory; never written unencrypted)."""
    members: dict[str, bytes] = {f"{name}.parquet": table_bytes(ds.tables[name], name) for name in COLUMNS}
    if with_intermediate_db:
        members["intermediate.sqlite"] = intermediate_db(ds)
    manifest = {
        "dataset": "IAPT / NHS Talking Therapies", "version": ds.version,
        "reporting_period": {"start": ds.period.first.isoformat(), "end": ds.period.last.isoformat()},
        "tables": {name: {"file": f"{name}.parquet", "rows": len(ds.tables[name]), "columns": COLUMNS[name]}
                   for name in COLUMNS},
        "files": {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in members.items()},
        **(extra or {}),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, b in members.items():
            zf.writestr(n, b, compress_type=zipfile.ZIP_DEFLATED if n.endswith(".sqlite") else zipfile.ZIP_STORED)
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return buf.getvalue(), manifest


def write(ds: Dataset, out_dir: Path, key: bytes, *, name: str | None = None, with_intermediate_db: bool = True,
          extra: dict | None = None) -> Written:
    """Write the encrypted archive to ``out_dir`` (mode 0600, written as ``.part`` then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain, manifest = archive_bytes(ds, with_intermediate_db=with_intermediate_db, extra=extra)
    blob = encrypt(plain, key)
    del plain
    path = out_dir / (name or f"iapt_{ds.period.key}_v{ds.version}.zip.enc")
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    part.replace(path)
    return Written(path, hashlib.sha256(blob).hexdigest(), len(blob), manifest)


def read_archive(path: Path, key: bytes) -> dict[str, pd.DataFrame]:
    """Decrypt and read every table back (for tests and for the submitter's own checks)."""
    return read_archive_bytes(path.read_bytes(), key)


def read_archive_bytes(blob: bytes, key: bytes) -> dict[str, pd.DataFrame]:
    """The tables (and ``manifest``) of an encrypted archive held in memory: what an intermediary received over
    MESH or SFTP reads back without touching the disk unencrypted."""
    with zipfile.ZipFile(io.BytesIO(decrypt(blob, key))) as zf:
        out = {n.removesuffix(".parquet"): pq.read_table(io.BytesIO(zf.read(n))).to_pandas()
               for n in zf.namelist() if n.endswith(".parquet")}
        out["manifest"] = json.loads(zf.read("manifest.json"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Data set archive tools for the named submitter")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decrypt", help=f"decrypt an archive with the key in ${KEY_ENV}")
    d.add_argument("archive", type=Path)
    d.add_argument("out", type=Path)
    sub.add_parser("new-key", help="print a new base64 AES-256 key")
    args = parser.parse_args(argv)
    if args.cmd == "new-key":
        print(new_key())
        return 0
    data = decrypt(args.archive.read_bytes(), load_key())
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    print(f"decrypted {args.archive.name} -> {args.out} ({len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
