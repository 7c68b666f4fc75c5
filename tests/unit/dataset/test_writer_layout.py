"""The written archive against NHS England's field list, so the bundled list and the writer cannot drift: every
table of the version, each Parquet file and IDB CSV column by column (names, order, types) as
``iapt_v2_1_fields.tsv`` has them; the bundled list is NHS England's (where the shared reference copy exists); v2.0
archives in v2.0's names and fields; codes keep their leading zeros; dates are dates; a field not recorded is
empty."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from caldicott.dataset import idb
from caldicott.dataset.builder import COLUMNS, Period, build, read_source
from caldicott.dataset.writer import decrypt, load_key, new_key, read_archive, write

SEPT = Period.month(2026, 9)
REFERENCE = Path("/work/shared/reference/iapt_v2_1_fields.tsv")
BUNDLED = Path(idb.__file__).with_name("iapt_v2_1_fields.tsv")
#: the national ``datetime`` fields that hold a time of day (the rest of that type are date-times), by name: an
#: independent statement of what idb derives from the data dictionary names
TIMES_OF_DAY = {"CareContTime", "OnwardReferTime", "AssToolCompTime", "StartTimeCareClust", "EndTimeCareClust"}


def _tsv(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def _expected_type(field: str, typ: str) -> pa.DataType:
    if typ == "datetime":
        return pa.time32("ms") if field in TIMES_OF_DAY else pa.timestamp("ms")      # Parquet's finest fit
    return {"str": pa.string(), "date": pa.date32(), "int": pa.int64()}[typ]


def _expected(path: Path) -> dict[str, list[tuple[str, pa.DataType]]]:
    out: dict[str, list[tuple[str, pa.DataType]]] = {}
    for r in _tsv(path):
        out.setdefault(r["table"], []).append((r["field"], _expected_type(r["field"], r["type"])))
    return out


@pytest.fixture(scope="module")
def key() -> bytes:
    return load_key(new_key())


@pytest.fixture(scope="module")
def archives(synth_source, key, tmp_path_factory):
    """The seeded month written as v2.1 and as v2.0: {version: (zip members, manifest)}."""
    out = {}
    for version in ("2.1", "2.0"):
        ds = build(read_source(synth_source.engine, SEPT), SEPT, org_provider="ZZZ01", version=version)
        written = write(ds, tmp_path_factory.mktemp(f"v{version}"), key)
        zf = zipfile.ZipFile(io.BytesIO(decrypt(written.path.read_bytes(), key)))
        out[version] = ({n: zf.read(n) for n in zf.namelist()}, json.loads(zf.read("manifest.json")), written, ds)
    return out


def test_bundled_field_list_is_nhs_englands():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not on this machine (the repository does not depend on it)")
    assert _tsv(BUNDLED) == _tsv(REFERENCE)


def test_field_list_shape():
    rows = _tsv(BUNDLED)
    assert len({r["table"] for r in rows}) == 21 and len(rows) == 140
    assert {r["type"] for r in rows} == {"str", "date", "datetime", "int"}
    assert {r["field"] for r in rows if r["type"] == "datetime"} == TIMES_OF_DAY | {"DateTimeDatSetCreate"}
    assert list(COLUMNS) == sorted({r["table"] for r in rows})


def test_v2_1_parquet_and_csv_match_the_national_list_column_by_column(archives):
    members, manifest, _, ds = archives["2.1"]
    expected = _expected(BUNDLED)
    assert sorted(n.removesuffix(".parquet") for n in members if n.endswith(".parquet")) == sorted(expected)
    assert sorted(n for n in members if n.startswith("idb/")) == sorted(f"idb/{t}.csv" for t in expected)
    for table, fields in expected.items():
        schema = pq.read_schema(io.BytesIO(members[f"{table}.parquet"]))
        assert [(f.name, f.type) for f in schema] == fields, table                  # names, order, types
        head = next(csv.reader(io.StringIO(members[f"idb/{table}.csv"].decode("utf-8"))))
        assert head == [f for f, _ in fields], table
        assert manifest["tables"][table]["columns"] == [f for f, _ in fields], table
        assert manifest["tables"][table]["rows"] == len(ds.tables[table]), table
    assert manifest["version"] == "2.1" and len(manifest["tables"]) == 21


def test_v2_0_archive_has_v2_0_names_and_fields(archives):
    members, manifest, _, ds = archives["2.0"]
    v20 = _expected(idb.FIELDS_FILES["2.0"])
    assert len(v20) == 19 and sum(len(f) for f in v20.values()) == 130
    assert sorted(manifest["tables"]) == sorted(v20)
    for table, fields in v20.items():
        schema = pq.read_schema(io.BytesIO(members[f"{table}.parquet"]))
        assert [(f.name, f.type) for f in schema] == fields, table
    ref = pq.read_table(io.BytesIO(members["IDS101Referral.parquet"]))
    assert "SourceOfReferralMH" in ref.column_names and "SourceOfReferralIAPT" not in ref.column_names
    assert ref["SourceOfReferralMH"].to_pylist() == ds.tables["IDS101Referral"]["SourceOfReferralIAPT"].astype(
        object).tolist()
    cc = pq.read_table(io.BytesIO(members["IDS201CareContact.parquet"]))
    assert "ConsMediumUsed" in cc.column_names and "ConsMechanism" not in cc.column_names
    mpi = pq.read_table(io.BytesIO(members["IDS001MPI.parquet"]))
    assert not {"GenderIdentity", "GenderIdentitySameAtBirth", "EthnicCategory2021"} & set(mpi.column_names)
    assert mpi["OrgIDResidenceResp"].null_count == mpi.num_rows               # v2.0-only, not recorded: empty
    emp = pq.read_schema(io.BytesIO(members["IDS004EmpStatus.parquet"])).names
    assert "JSAInd" in emp and "EmpSupportDischargeDate" not in emp
    header = pq.read_table(io.BytesIO(members["IDS000Header.parquet"]))
    assert header["DatSetVer"].to_pylist() == ["2.0"]


def test_v2_0_mapping_is_by_uid_and_documented():
    """Each v2.0 field is the v2.1 field with the same uid, renamed only where v2.1 renamed it."""
    renamed = {(t, f.name, f.source) for t, fs in idb.layout("2.0").items() for f in fs
               if f.source is not None and f.source != f.name}
    assert renamed == {("IDS101Referral", "SourceOfReferralMH", "SourceOfReferralIAPT"),
                       ("IDS201CareContact", "ConsMediumUsed", "ConsMechanism")}
    empty = {(t, f.name) for t, fs in idb.layout("2.0").items() for f in fs if f.source is None}
    assert empty == {("IDS001MPI", "OrgIDResidenceResp"), ("IDS002GP", "OrgIDGPPrac"), ("IDS004EmpStatus", "JSAInd"),
                     ("IDS004EmpStatus", "OtherBenefitInd")}


def test_leading_zeros_dates_and_blanks_in_the_files(archives):
    members = archives["2.1"][0]
    ref = pq.read_table(io.BytesIO(members["IDS101Referral.parquet"]))
    assert ref.schema.field("ReferralRequestReceivedDate").type == pa.date32()
    mpi = pq.read_table(io.BytesIO(members["IDS001MPI.parquet"]))
    status = mpi["NHSNumberStatus"].to_pylist()
    assert status and set(status) <= {"01", "07"} and "01" in status                  # "01", not 1
    cc = pq.read_table(io.BytesIO(members["IDS201CareContact.parquet"]))
    assert any(c.startswith("0") for c in cc["AppType"].to_pylist())
    assert cc.schema.field("CareContTime").type == pa.time32("ms") and cc["CareContTime"].null_count == 0
    rows = list(csv.reader(io.StringIO(members["idb/IDS201CareContact.csv"].decode("utf-8"))))
    head = rows[0]
    assert all(len(r[head.index("CareContTime")]) == 8 for r in rows[1:])            # HH:MM:SS
    assert any(r[head.index("AppType")].startswith("0") for r in rows[1:])
    # a field the service does not record: empty in both files (OrgIDReceiving has no IDS105 rows to fill;
    # the v2.0-only OrgIDResidenceResp is never recorded)
    gp = pq.read_table(io.BytesIO(members["IDS002GP.parquet"]))
    assert gp["StartDateGMPRegistration"].null_count == gp.num_rows
    gp_rows = list(csv.reader(io.StringIO(members["idb/IDS002GP.csv"].decode("utf-8"))))
    assert {r[gp_rows[0].index("StartDateGMPRegistration")] for r in gp_rows[1:]} == {""}


def test_read_back_is_the_written_tables(archives, key):
    _, _, written, ds = archives["2.1"]
    tables = read_archive(written.path, key)
    assert {k: len(v) for k, v in tables.items() if k != "manifest"} == ds.counts()
    ref = tables["IDS101Referral"]
    assert ref["ReferralRequestReceivedDate"].dtype.kind == "M"                        # usable as dates in pandas
    assert list(ref.columns) == COLUMNS["IDS101Referral"]
