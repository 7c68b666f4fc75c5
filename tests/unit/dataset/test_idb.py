"""The IDB CSVs the submitter imports: one per national table of the version, every national field in NHS England's
order and names, UTF-8 with a header row, ISO dates, blanks for what the source does not record; a builder column the
national layout does not know fails loudly; a table given only some columns gets the rest empty; the submitter's
command writes them (0600) from the encrypted archive, and they are never on disk otherwise. (Column types of the
written Parquet files: test_writer_layout.py.)"""

from __future__ import annotations

import csv
import io
import os
import stat

import pandas as pd
import pytest
from caldicott.dataset import idb
from caldicott.dataset.builder import COLUMNS, Period, build, read_source
from caldicott.dataset.writer import load_key, main, new_key, write, write_idb

SEPT = Period.month(2026, 9)


@pytest.fixture(scope="module")
def month(synth_source):
    return build(read_source(synth_source.engine, SEPT), SEPT, org_provider="ZZZ01")


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_every_built_table_in_national_columns_and_order(month):
    national = idb.national_fields()
    assert len(national) == 21 and sum(len(v) for v in national.values()) == 140
    members = idb.members(month.tables)
    assert list(members) == [f"idb/{t}.csv" for t in idb.import_order(list(COLUMNS))] and len(members) == 21
    assert next(iter(members)) == "idb/IDS000Header.csv"
    for name in COLUMNS:
        rows = _rows(members[f"idb/{name}.csv"])
        assert rows[0] == [f for f, _ in national[name]], name        # names and order exactly
        assert len(rows) - 1 == len(month.tables[name]), name
    ref = _rows(members["idb/IDS101Referral.csv"])
    assert ref[0] == ["ServiceRequestId", "LocalPatientId", "OrgIDComm", "ReferralRequestReceivedDate",
                      "SourceOfReferralIAPT", "OnsetDate", "PrevDiagCondInd", "EndCode", "ServDischDate"]
    act = _rows(members["idb/IDS202CareActivity.csv"])[0]
    assert "CarePersLocalId" in act and "CareProfLocalId" not in act                 # the national name


def test_values_dates_and_blanks(month):
    members = idb.members(month.tables)
    raw = members["idb/IDS101Referral.csv"]
    assert b"\r\n" in raw and not raw.startswith(b"\xef\xbb\xbf")                   # CRLF, no BOM
    rows = _rows(raw)
    head, body = rows[0], rows[1:]
    frame = month.tables["IDS101Referral"].reset_index(drop=True)
    received = [r[head.index("ReferralRequestReceivedDate")] for r in body]
    assert received == frame["ReferralRequestReceivedDate"].dt.strftime("%Y-%m-%d").tolist()   # ISO dates
    onset = frame["OnsetDate"].astype(object)
    assert [r[head.index("OnsetDate")] for r in body] == ["" if pd.isna(v) else v for v in onset]  # null: blank
    assert [r[0] for r in body] == frame["ServiceRequestId"].astype(str).tolist()
    header = _rows(members["idb/IDS000Header.csv"])
    created = header[1][header[0].index("DateTimeDatSetCreate")]
    assert len(created) == 19 and created[10] == " " and created[:4].isdigit()       # YYYY-MM-DD HH:MM:SS
    contacts = _rows(members["idb/IDS201CareContact.csv"])
    durations = [r[contacts[0].index("ClinContDurOfCareCont")] for r in contacts[1:]]
    assert all(d == "" or d.isdigit() for d in durations)                           # whole numbers, no ".0"


def test_text_is_utf8_and_quoted_only_where_needed():
    df = pd.DataFrame({"ServiceRequestId": ["R1", "R,2"], "LocalPatientId": ['O"Brien-Zoë', None]})
    rows = _rows(idb.csv_bytes(df, "IDS101Referral"))
    assert rows[1][:2] == ["R1", 'O"Brien-Zoë'] and rows[2][:2] == ["R,2", ""]


def test_an_unknown_column_or_table_fails_loudly():
    df = pd.DataFrame({"ServiceRequestId": ["R1"], "ReferralReason": ["x"]})
    with pytest.raises(idb.IdbLayoutError, match="ReferralReason are not national IDB fields"):
        idb.csv_bytes(df, "IDS101Referral")
    with pytest.raises(idb.IdbLayoutError, match="IDS999Made is not a table"):
        idb.csv_bytes(df, "IDS999Made")
    with pytest.raises(idb.IdbLayoutError, match="CareProfLocalId"):            # the old name is gone for good
        idb.csv_bytes(pd.DataFrame({"CareActId": ["A-1"], "CareProfLocalId": ["T1"]}), "IDS202CareActivity")
    assert not hasattr(idb, "RENAMES")
    with pytest.raises(idb.IdbLayoutError, match=r"IDS003AccommStatus is not a table of data set version 2\.0"):
        idb.csv_bytes(pd.DataFrame({"LocalPatientId": ["P1"]}), "IDS003AccommStatus", "2.0")
    with pytest.raises(idb.IdbLayoutError, match="needs table"):
        idb.members({"IDS000Header": pd.DataFrame()})


def test_a_table_given_some_columns_gets_the_rest_empty():
    """Every national field is written whatever the frame holds; the import order puts parents first."""
    accomm = pd.DataFrame({"LocalPatientId": ["P1"], "AccommodationType": ["01"],
                           "AccommodationTypeDate": pd.to_datetime(["2026-09-03"])})
    rows = _rows(idb.csv_bytes(accomm, "IDS003AccommStatus"))
    assert rows[0] == [f for f, _ in idb.national_fields()["IDS003AccommStatus"]]
    assert rows[1] == ["P1", "01", "", "2026-09-03", "", ""]
    assert idb.import_order(["IDS607CodedScoreAssessmentAct", "IDS003AccommStatus", "IDS101Referral",
                             "IDS000Header"]) == ["IDS000Header", "IDS003AccommStatus", "IDS101Referral",
                                                  "IDS607CodedScoreAssessmentAct"]


def test_v2_0_csvs_use_v2_0_names_and_fields(month):
    members = idb.members(month.tables, "2.0")
    assert len(members) == 19 and "idb/IDS003AccommStatus.csv" not in members
    assert "idb/IDS601MedHistPrevDiag.csv" not in members
    ref = _rows(members["idb/IDS101Referral.csv"])[0]
    assert "SourceOfReferralMH" in ref and "SourceOfReferralIAPT" not in ref
    mpi = _rows(members["idb/IDS001MPI.csv"])
    assert mpi[0][:3] == ["LocalPatientId", "OrgIDLocalPatientId", "OrgIDResidenceResp"]
    assert not {"GenderIdentity", "GenderIdentitySameAtBirth", "EthnicCategory2021"} & set(mpi[0])
    assert {r[2] for r in mpi[1:]} == {""}                              # v2.0-only, not recorded: empty
    cc = _rows(members["idb/IDS201CareContact.csv"])
    head = cc[0]
    assert "ConsMediumUsed" in head and "ConsMechanism" not in head
    frame = month.tables["IDS201CareContact"]
    assert [r[head.index("ConsMediumUsed")] for r in cc[1:]] == frame["ConsMechanism"].astype(str).tolist()


def test_the_submitter_writes_them_from_the_encrypted_archive(month, tmp_path, monkeypatch, capsys):
    key_text = new_key()
    written = write(month, tmp_path / "work", load_key(key_text))
    assert b"ServiceRequestId" not in written.path.read_bytes()                     # encrypted at rest
    out = tmp_path / "idb"
    files = write_idb(written.path, out, load_key(key_text))
    assert [f.stem for f in files] == idb.import_order(list(COLUMNS))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert files[0].read_bytes() == idb.members(month.tables)["idb/IDS000Header.csv"]
    monkeypatch.setenv("CALDICOTT_DATASET_KEY", key_text)
    assert main(["idb", str(written.path), str(tmp_path / "again")]) == 0
    assert "import in this order" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "again")) == sorted(f.name for f in files)
