"""Plant transfer-of-care source rows into a copy of a synthetic records database (until the generator fills
``onward_referral`` itself): receiving providers on every channel, one with no channel, one outside the adequacy
list, a named contact, and one onward referral to each, on one day. Shared by the unit, peer and e2e tests."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from caldicott.crypto.keys import Identity, make_identity
from caldicott.records import schema
from caldicott.records.nhs_numbers import valid_mask
from sqlalchemy import Engine, insert, select

DAY = dt.date(2026, 10, 14)
MESH_WORKFLOW = "TRANSFER_OF_CARE_REPORT"
CONTACT = {"care_pers_local_id": "TOCC001", "display_name": "Alex Contactperson", "role": "High intensity therapist",
           "email": "alex.contact@nhs.example", "telephone": "0113 000 0099"}


@dataclass
class Planted:
    """What was planted: onward referral id -> receiving ODS code, the receivers' keys, and the patients used."""

    onward: dict[str, str] = field(default_factory=dict)
    referral_of: dict[str, str] = field(default_factory=dict)
    identities: dict[str, Identity] = field(default_factory=dict)
    orgs: dict[str, dict] = field(default_factory=dict)


def copy_source(src_db: Path, dst: Path) -> Path:
    """A writable copy of a SQLite records database (SQLite's backup API: includes what is still in its WAL)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"file:{src_db}?mode=ro", uri=True) as src, sqlite3.connect(dst) as out:
        src.backup(out)
    return dst


def receivers(*, mesh_mailbox: str, sftp_conn: str = "caldicott_sftp_referrer", sftp_path: str = "/transfers",
              email: str = "transfers@receiver.nhs.example") -> tuple[list[dict], dict[str, Identity]]:
    """The receiving organisations: code -> row (certificates made here; their keys returned for decryption)."""
    ids = {"ZTSMI1": make_identity("ZTSMI1 receiver"), "ZTSFT1": make_identity("ZTSFT1 receiver")}
    base = {"kind": "provider", "channel": None, "mesh_mailbox": None, "mesh_workflow": None, "email": None,
            "certificate_pem": None, "connection_id": None, "remote_path": None}
    rows = [
        {**base, "ods_code": "ZTMSH1", "name": "Mesh Receiving Trust", "country": "GB", "channel": "mesh",
         "mesh_mailbox": mesh_mailbox, "mesh_workflow": MESH_WORKFLOW},
        {**base, "ods_code": "ZTSMI1", "name": "Email Receiving Trust", "country": "GB", "channel": "smime-email",
         "email": email, "certificate_pem": ids["ZTSMI1"].cert_pem.decode()},
        {**base, "ods_code": "ZTSFT1", "name": "Dublin Receiving Clinic", "country": "IE", "channel": "sftp",
         "connection_id": sftp_conn, "remote_path": sftp_path, "certificate_pem": ids["ZTSFT1"].cert_pem.decode()},
        {**base, "ods_code": "ZTNON1", "name": "No Channel Provider", "country": "GB"},
        {**base, "ods_code": "ZTUSA1", "name": "Overseas Provider", "country": "US", "channel": "mesh",
         "mesh_mailbox": mesh_mailbox, "mesh_workflow": MESH_WORKFLOW},
    ]
    return rows, ids


def eligible_referrals(engine: Engine, n: int) -> list[str]:
    """Referrals of distinct patients with a valid NHS number, a known GP practice and an e-mailed copy."""
    pats = pd.read_sql(select(schema.patient), engine)
    pats = pats[valid_mask(pats["nhs_number"]) & pats["email"].notna() & pats["copy_channel"].eq("email")
                & pats["gp_practice_code"].notna() & ~pats["nhs_number"].duplicated(keep=False)]
    practices = set(pd.read_sql(select(schema.gp_practice.c.ods_code), engine)["ods_code"])
    pats = pats[pats["gp_practice_code"].isin(practices)]
    refs = pd.read_sql(select(schema.referral.c.service_request_id, schema.referral.c.local_patient_id), engine)
    refs = refs[refs["local_patient_id"].isin(set(pats["local_patient_id"]))]
    refs = refs.drop_duplicates("local_patient_id").sort_values("service_request_id")
    return refs["service_request_id"].head(n).tolist()


def plant(engine: Engine, *, mesh_mailbox: str, day: dt.date = DAY, **kw) -> Planted:
    """Insert the receivers, the contact and one onward referral per receiver on ``day`` (10:00 UTC)."""
    rows, ids = receivers(mesh_mailbox=mesh_mailbox, **kw)
    refs = eligible_referrals(engine, len(rows))
    out = Planted(identities=ids, orgs={r["ods_code"]: r for r in rows})
    at = dt.datetime.combine(day, dt.time(10))
    with engine.begin() as conn:
        conn.execute(insert(schema.organisation), rows)
        conn.execute(insert(schema.care_personnel), [CONTACT])
        conn.execute(schema.referral.update().where(schema.referral.c.service_request_id.in_(refs)).values(
            risk_summary="Low risk: no current plans or intent; safety plan agreed."))
        for n, (org, rid) in enumerate(zip([r["ods_code"] for r in rows], refs, strict=True)):
            oid = f"TOC-{day:%Y%m%d}-{n}"
            conn.execute(insert(schema.onward_referral), [{
                "onward_referral_id": oid, "service_request_id": rid, "referred_at": at + dt.timedelta(minutes=n),
                "reason": "03", "receiving_org_code": org, "contact_care_pers_id": CONTACT["care_pers_local_id"]}])
            out.onward[oid] = org
            out.referral_of[oid] = rid
    return out
