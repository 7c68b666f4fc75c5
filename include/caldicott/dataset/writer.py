"""Write the submission: one Parquet file per table, one IDB CSV per table and ``manifest.json``, in one
archive, encrypted at rest.

The archive is a ZIP with every table of the data set version (v2.1: all 21, ``IDS000Header`` ...
``IDS902CarePersQual``, empty ones included; v2.0: its 19), each in NHS England's national layout of that version
(:mod:`caldicott.dataset.idb`: every field, national names and order): ``IDS000Header.parquet`` ... with the
national types (dates as dates, times as times of day, codes as text with their leading zeros, counts as
integers; loss-free, nulls kept), ``idb/IDS000Header.csv`` ... (the same table as the text NHS England's
intermediate database imports) and ``manifest.json`` (row counts, columns and sha256 of every member).

It is built in memory and only its encrypted form touches the disk: AES-256-GCM with a key from configuration
(an Airflow connection or ``CALDICOTT_DATASET_KEY``, base64 of 32 bytes), random 96-bit nonce, the file header
as associated data::

    b"CALDDS1\\n" | key id (8 bytes: first 8 of sha256(key)) | nonce (12) | ciphertext+tag

No plain patient data is written anywhere, not even to a temporary file: the intermediate SQLite database earlier
versions built in the temporary folder (in clear, row by row) is gone; the CSVs replace it. The one file written
while the archive is made, ``NAME.part``, is encrypted, deleted in a ``finally`` if the write fails, and swept by
the next run (:func:`sweep`) if the process was killed mid-write.

The named submitter uses the same key: ``python -m caldicott.dataset.writer idb FILE OUTDIR`` writes the IDB CSVs
(0600, in a 0700 folder) for the IDB's import, ``decrypt FILE OUT.zip`` the whole archive.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from caldicott.dataset import idb
from caldicott.dataset.builder import Dataset

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


def _seal(data: bytes, key: bytes) -> tuple[bytes, bytes]:
    """The archive's header (magic, key id, nonce; authenticated too) and the AES-256-GCM ciphertext of ``data``,
    apart: a caller writing to a file need not join them (one more copy of a national month's archive)."""
    nonce = os.urandom(12)
    head = MAGIC + key_id(key) + nonce
    return head, AESGCM(key).encrypt(nonce, data, head)


def encrypt(data: bytes, key: bytes) -> bytes:
    head, sealed = _seal(data, key)
    return head + sealed


def decrypt(blob: bytes, key: bytes) -> bytes:
    if not blob.startswith(MAGIC):
        raise ValueError("not a Caldicott data set archive")
    head = blob[: len(MAGIC) + 20]
    if head[len(MAGIC): len(MAGIC) + 8] != key_id(key):
        raise ValueError("archive was encrypted with a different key")
    return AESGCM(key).decrypt(head[-12:], blob[len(head):], head)


def parquet_bytes(typed: pa.Table) -> bytes:
    """One table, already in its national layout (:func:`caldicott.dataset.idb.arrow_table`), as Parquet."""
    buf = io.BytesIO()
    pq.write_table(typed, buf, compression="zstd")
    return buf.getvalue()


def table_bytes(df: pd.DataFrame, name: str, version: str = idb.BUILDER_VERSION) -> bytes:
    """The Parquet file of one built table in the national layout of ``version``."""
    return parquet_bytes(idb.arrow_table(df, name, version))


@dataclass(frozen=True)
class Written:
    path: Path
    sha256: str            # of the encrypted file (what the ledger records as leaving)
    size: int
    manifest: dict[str, Any]


def archive_bytes(ds: Dataset, *, with_idb: bool = True,
                  extra: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The plaintext ZIP and its manifest (kept in memory; never written unencrypted).

    Every table of the version's national layout is written, in import order, each laid out once
    (:func:`caldicott.dataset.idb.arrow_table`) and then written as Parquet and as the IDB CSV, so the two cannot
    disagree. A table of the version the data set lacks fails loudly (the file would fail NHS England's structure
    check)."""
    names = idb.tables(ds.version)
    missing = [n for n in names if n not in ds.tables]
    if missing:
        raise idb.IdbLayoutError(f"data set {ds.version} needs table(s) {', '.join(missing)}")
    typed = {name: idb.arrow_table(ds.tables[name], name, ds.version) for name in names}
    members = [*((f"{name}.parquet", partial(parquet_bytes, typed[name])) for name in names),
               *((f"{idb.FOLDER}/{name}.csv", partial(idb.csv_from_arrow, typed[name])) for name in names if with_idb)]
    files: dict[str, dict[str, Any]] = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        # member by member, each let go once it is in the ZIP: a national month's CSVs are about a gigabyte of text
        # which, held all at once beside the Parquet files, the ZIP and its ciphertext, made the task's peak memory
        for member, make in members:
            data = make()
            files[member] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if member.endswith(".csv"):   # text: deflate, quickly (a national month is hundreds of MB of CSV)
                zf.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
            else:                         # Parquet is compressed already
                zf.writestr(member, data, compress_type=zipfile.ZIP_STORED)
            del data
        layout_file = idb.FIELDS_FILES[ds.version].name
        csvs = [n for n, _ in members if n.endswith(".csv")]
        manifest = {
            "dataset": "IAPT / NHS Talking Therapies", "version": ds.version,
            "reporting_period": {"start": ds.period.first.isoformat(), "end": ds.period.last.isoformat()},
            "layout": f"IAPT v{ds.version} national tables ({layout_file})",
            "tables": {name: {"file": f"{name}.parquet", "rows": typed[name].num_rows,
                              "columns": typed[name].column_names} for name in names},
            "idb": {"layout": f"IAPT v{ds.version} intermediate database ({layout_file})", "encoding": "UTF-8",
                    "import_order": [n.removeprefix(f"{idb.FOLDER}/").removesuffix(".csv") for n in csvs]}
            if csvs else None,
            "files": files,
            **(extra or {}),
        }
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return buf.getvalue(), manifest


def write(ds: Dataset, out_dir: Path, key: bytes, *, name: str | None = None, with_idb: bool = True,
          extra: dict[str, Any] | None = None) -> Written:
    """Write the encrypted archive to ``out_dir`` (mode 0600, written as ``.part`` then renamed).

    The ``.part`` is removed if anything fails on the way (a ``finally``); a process killed mid-write leaves it
    for :func:`sweep` at the next run. It only ever holds ciphertext.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plain, manifest = archive_bytes(ds, with_idb=with_idb, extra=extra)
    head, sealed = _seal(plain, key)
    del plain
    path = out_dir / (name or f"iapt_{ds.period.key}_v{ds.version}.zip.enc")
    part = path.with_name(path.name + ".part")
    done = False
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(head)
            fh.write(sealed)
        part.replace(path)
        done = True
    finally:
        if not done:
            part.unlink(missing_ok=True)
    digest = hashlib.sha256(head)
    digest.update(sealed)
    return Written(path, digest.hexdigest(), len(head) + len(sealed), manifest)


#: temporary folders earlier versions made for the intermediate SQLite database (in clear) in the temp folder
LEGACY_TEMP_PREFIX = "caldicott-ids-"


def sweep(out_dir: Path) -> list[str]:
    """Delete what a killed run left: ``*.part`` files in ``out_dir`` and this user's legacy temporary folders.

    Returns the names removed (file names only: they hold no patient data). Runs at the start of every build.
    """
    removed: list[str] = []
    if out_dir.is_dir():
        for p in out_dir.glob("*.part"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    tmp = Path(tempfile.gettempdir())
    for p in tmp.glob(f"{LEGACY_TEMP_PREFIX}*"):
        try:
            if p.is_dir() and p.stat().st_uid == os.getuid():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        except OSError:
            continue
    return removed


def read_archive(path: Path, key: bytes, tables: Collection[str] | None = None) -> dict[str, pd.DataFrame]:
    """Decrypt and read the tables back (every one, or only ``tables``): for tests, the submitter's own checks and
    the steps after the build that need a few tables of it (NDOP numbers, the commissioner extract)."""
    return read_archive_bytes(path.read_bytes(), key, tables)


def read_archive_bytes(blob: bytes, key: bytes, tables: Collection[str] | None = None) -> dict[str, pd.DataFrame]:
    """The tables (and ``manifest``) of an encrypted archive held in memory: what an intermediary received over
    MESH or SFTP reads back without touching the disk unencrypted. ``tables`` names the tables wanted (all when
    None): a national month's score table alone is millions of rows that the NDOP steps never look at; the
    manifest still gives every table's row count.

    The tables are as written (national names of the archive's version); dates come back as pandas datetimes
    (``datetime64``, so date arithmetic works as on the built frames), times of day as ``datetime.time``."""
    wanted = None if tables is None else {f"{t}.parquet" for t in tables}
    with zipfile.ZipFile(io.BytesIO(decrypt(blob, key))) as zf:
        out = {n.removesuffix(".parquet"): pq.read_table(io.BytesIO(zf.read(n))).to_pandas(date_as_object=False)
               for n in zf.namelist() if n.endswith(".parquet") and (wanted is None or n in wanted)}
        out["manifest"] = json.loads(zf.read("manifest.json"))
    return out


def write_idb(archive: Path, out_dir: Path, key: bytes) -> list[Path]:
    """Decrypt ``archive`` and write its IDB CSVs into ``out_dir`` (made 0700; files 0600), in import order.

    For the named submitter, on an encrypted drive: these files hold patient data in clear, for as long as the
    IDB import takes. Delete the folder after the upload.
    """
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out_dir, 0o700)
    written: list[Path] = []
    with zipfile.ZipFile(io.BytesIO(decrypt(archive.read_bytes(), key))) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        order = (manifest.get("idb") or {}).get("import_order") or []
        if not order:
            raise ValueError("this archive carries no IDB CSVs (written before they were added): use decrypt")
        for table in order:
            target = out_dir / f"{table}.csv"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(zf.read(f"{idb.FOLDER}/{table}.csv"))
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Data set archive tools for the named submitter")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decrypt", help=f"decrypt an archive (zip) with the key in ${KEY_ENV}")
    d.add_argument("archive", type=Path)
    d.add_argument("out", type=Path)
    i = sub.add_parser("idb", help=f"write the archive's IDB CSVs into a folder, with the key in ${KEY_ENV}")
    i.add_argument("archive", type=Path)
    i.add_argument("out_dir", type=Path)
    sub.add_parser("new-key", help="print a new base64 AES-256 key")
    args = parser.parse_args(argv)
    if args.cmd == "new-key":
        print(new_key())
        return 0
    if args.cmd == "idb":
        files = write_idb(args.archive, args.out_dir, load_key())
        print(f"{len(files)} IDB tables in {args.out_dir}, import in this order:", file=sys.stderr)
        for f in files:
            print(f"  {f.name}", file=sys.stderr)
        return 0
    data = decrypt(args.archive.read_bytes(), load_key())
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    print(f"decrypted {args.archive.name} -> {args.out} ({len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
