"""A straightforward row-by-row builder and validator, kept only as the benchmark's yardstick.

Plain Python: loops over rows, dicts for the tables, ``re`` and ``zoneinfo`` per value. It implements the
same table mapping as :mod:`caldicott.dataset.builder` and a subset of the rules (the reject-file record
checks, the usual format/value checks, the date checks and the reject-group cascade), so
``bench/monthly_dataset.py`` can check both reach the same quarantine decisions for those rules and report
the speed ratio. Not used by the DAG.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

from caldicott.records.schema import SCORE_RANGES

LONDON, UTC = ZoneInfo("Europe/London"), dt.UTC
POSTCODE = re.compile(r"[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}")
ID20 = re.compile(r"[!-~][ -~]{0,19}")
TEN = re.compile(r"[0-9]{10}")
ATTEND = {"2", "3", "4", "5", "6", "7"}
APP_TYPE = {"01", "02", "03", "04", "05", "06", "07"}
GENDER = {"1", "2", "9", "X"}
ETHNIC = set("ABCDEFGHJKLMNPRSZ") | {"99"}
#: The rules evaluated here (plus the reject-group cascade, which both implementations always run).
CODES = ("IDSREJ006", "IDSREJ007", "IDSREJ008", "IDSREJ009", "IDSREJ010", "IDS00102", "IDS00131", "IDS00133",
         "IDS10113", "IDS10140", "IDS10128", "IDS20108", "IDS20170", "IDS20171", "IDS20128", "IDS20156",
         "IDS60607", "IDS60613", "IDS60707", "IDS60710")


def _none(v):
    if v is None:
        return None
    try:
        if v != v:  # NaN / NaT
            return None
    except TypeError:
        pass
    return v


def _date(v) -> dt.date | None:
    v = _none(v)
    if v is None:
        return None
    if hasattr(v, "date") and callable(v.date):
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v)[:10])


def nhs_ok(n: str) -> bool:
    if not TEN.fullmatch(n):
        return False
    total = sum(int(d) * w for d, w in zip(n[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(n[9]) and n[:5] != n[:4:-1] and n != "0000000000"


def reference_build_validate(src, period) -> tuple[dict[str, list[dict]], list[tuple[str, str, str]]]:
    first, last, end = period.first, period.last, period.end
    t: dict[str, list[dict]] = {k: [] for k in ("IDS001MPI", "IDS002GP", "IDS101Referral", "IDS201CareContact",
                                                 "IDS202CareActivity", "IDS606CodedScoreAssessmentRefer",
                                                 "IDS607CodedScoreAssessmentAct")}
    for p in src.patients.itertuples(index=False):
        nhs = _none(p.nhs_number)
        t["IDS001MPI"].append({"LocalPatientId": p.local_patient_id, "NHSNumber": nhs,
                               "NHSNumberStatus": "01" if nhs else "07", "PersonBirthDate": _date(p.birth_date),
                               "Postcode": _none(p.postcode), "Gender": _none(p.gender),
                               "EthnicCategory": _none(p.ethnic_category), "_rid": p.local_patient_id})
        t["IDS002GP"].append({"LocalPatientId": p.local_patient_id,
                              "GMPCodeReg": _none(p.gp_practice_code) or "V81999", "_rid": p.local_patient_id})
    for r in src.referrals.itertuples(index=False):
        disch = _date(r.discharge_date)
        after = disch is not None and disch >= end
        t["IDS101Referral"].append({"ServiceRequestId": r.service_request_id, "LocalPatientId": r.local_patient_id,
                                    "ReferralRequestReceivedDate": _date(r.received_date),
                                    "ServDischDate": None if after else disch,
                                    "EndCode": None if after else _none(r.end_code), "_rid": r.service_request_id})
    scored = {a for a in src.assessments["care_contact_id"].tolist() if _none(a) is not None}
    for c in src.contacts.itertuples(index=False):
        local = c.contact_at.to_pydatetime().replace(tzinfo=UTC).astimezone(LONDON)
        t["IDS201CareContact"].append({"CareContactId": c.care_contact_id, "ServiceRequestId": c.service_request_id,
                                       "CareContDate": local.date(), "CareContTime": local.strftime("%H:%M:%S"),
                                       "AttendOrDNACode": c.attend_code, "AppType": c.app_type,
                                       "_rid": c.care_contact_id})
        if c.attend_code in ("5", "6") or c.care_contact_id in scored:
            t["IDS202CareActivity"].append({"CareActId": c.care_contact_id + "-1", "CareContactId": c.care_contact_id,
                                            "_rid": c.care_contact_id + "-1"})
    for a in src.assessments.itertuples(index=False):
        cc = _none(a.care_contact_id)
        if cc is None:
            local = a.assessed_at.to_pydatetime().replace(tzinfo=UTC).astimezone(LONDON)
            t["IDS606CodedScoreAssessmentRefer"].append({"ServiceRequestId": a.service_request_id,
                                                         "CodedAssToolType": a.tool_code, "PersScore": str(a.score),
                                                         "AssToolCompDate": local.date(), "_rid": a.assessment_id})
        else:
            t["IDS607CodedScoreAssessmentAct"].append({"CareActId": cc + "-1", "CodedAssToolType": a.tool_code,
                                                       "PersScore": str(a.score), "_rid": a.assessment_id})

    quarantined: list[tuple[str, str, str]] = []
    drop: dict[str, set[str]] = {k: set() for k in t}

    warnings: dict[str, int] = {}

    def fail(table: str, row: dict, code: str, reject: bool = True) -> None:
        if not reject:  # warnings are counted, not quarantined (as in rules.screen)
            warnings[code] = warnings.get(code, 0) + 1
            return
        quarantined.append((table, row["_rid"], code))
        drop[table].add(row["_rid"])

    blanked: list[tuple[str, str, str]] = []
    to_blank: list[tuple[dict, str]] = []

    def blank(row: dict, column: str, code: str) -> None:
        """An optional field judged on its own: the patient stays, the field goes blank (as rules.screen)."""
        blanked.append(("IDS001MPI", row["_rid"], code))
        to_blank.append((row, column))

    seen_nhs: dict[str, int] = {}
    seen_pid: dict[str, int] = {}
    for row in t["IDS001MPI"]:
        if row["NHSNumber"]:
            seen_nhs[row["NHSNumber"]] = seen_nhs.get(row["NHSNumber"], 0) + 1
        seen_pid[row["LocalPatientId"]] = seen_pid.get(row["LocalPatientId"], 0) + 1
    birth: dict[str, dt.date | None] = {}
    for row in t["IDS001MPI"]:
        if row["NHSNumber"] and not nhs_ok(row["NHSNumber"]):
            blank(row, "NHSNumber", "IDSREJ006")
        if row["Postcode"] and not POSTCODE.fullmatch(row["Postcode"]):
            blank(row, "Postcode", "IDSREJ007")
        b = row["PersonBirthDate"]
        if b is not None and (b > last or b < dt.date(1890, 1, 1)):
            blank(row, "PersonBirthDate", "IDSREJ008")
        if row["NHSNumber"] and seen_nhs[row["NHSNumber"]] > 1:
            blank(row, "NHSNumber", "IDSREJ009")
        if seen_pid[row["LocalPatientId"]] > 1:
            fail("IDS001MPI", row, "IDSREJ010")
        if not ID20.fullmatch(row["LocalPatientId"]):
            fail("IDS001MPI", row, "IDS00102")
        if row["Gender"] is not None and row["Gender"] not in GENDER:
            fail("IDS001MPI", row, "IDS00131", reject=False)
        if row["EthnicCategory"] is not None and row["EthnicCategory"] not in ETHNIC:
            fail("IDS001MPI", row, "IDS00133", reject=False)
    for row, column in to_blank:
        row[column] = None
    for row in t["IDS001MPI"]:
        birth.setdefault(row["LocalPatientId"], row["PersonBirthDate"])
    received: dict[str, dt.date] = {}
    for row in t["IDS101Referral"]:
        received.setdefault(row["ServiceRequestId"], row["ReferralRequestReceivedDate"])
        rec, dis = row["ReferralRequestReceivedDate"], row["ServDischDate"]
        if rec is not None and rec > last:
            fail("IDS101Referral", row, "IDS10113")
        b = birth.get(row["LocalPatientId"])
        if rec is not None and b is not None and rec < b:
            fail("IDS101Referral", row, "IDS10140")
        if dis is not None and rec is not None and dis < rec:
            fail("IDS101Referral", row, "IDS10128")
    for row in t["IDS201CareContact"]:
        d = row["CareContDate"]
        if d > last:
            fail("IDS201CareContact", row, "IDS20108")
        if d < first:
            fail("IDS201CareContact", row, "IDS20170")
        rec = received.get(row["ServiceRequestId"])
        if rec is not None and d < rec:
            fail("IDS201CareContact", row, "IDS20171")
        if row["AttendOrDNACode"] not in ATTEND:
            fail("IDS201CareContact", row, "IDS20128")
        if row["AppType"] not in APP_TYPE:
            fail("IDS201CareContact", row, "IDS20156")
    for table, code_range, code_ref in (("IDS606CodedScoreAssessmentRefer", "IDS60607", "IDS60613"),
                                        ("IDS607CodedScoreAssessmentAct", "IDS60707", "IDS60710")):
        for row in t[table]:
            rng = SCORE_RANGES.get(row["CodedAssToolType"])
            if rng is None:
                fail(table, row, code_ref)
            elif not rng[0] <= int(row["PersScore"]) <= rng[1]:
                fail(table, row, code_range, reject=False)   # out of its item's range: a warning

    for table, ids in drop.items():
        t[table] = [r for r in t[table] if r["_rid"] not in ids]
    # reject-group cascade, parent to child
    orphan = [("IDS002GP", "LocalPatientId", "IDS001MPI", "LocalPatientId", "IDS00220"),
              ("IDS101Referral", "LocalPatientId", "IDS001MPI", "LocalPatientId", "IDS10101"),
              ("IDS001MPI", "LocalPatientId", "IDS101Referral", "LocalPatientId", "IDS00146"),
              ("IDS002GP", "LocalPatientId", "IDS001MPI", "LocalPatientId", "IDS00220"),
              ("IDS201CareContact", "ServiceRequestId", "IDS101Referral", "ServiceRequestId", "IDS20142"),
              ("IDS606CodedScoreAssessmentRefer", "ServiceRequestId", "IDS101Referral", "ServiceRequestId",
               "IDS60612"),
              ("IDS202CareActivity", "CareContactId", "IDS201CareContact", "CareContactId", "IDS20224"),
              ("IDS607CodedScoreAssessmentAct", "CareActId", "IDS202CareActivity", "CareActId", "IDS60708")]
    for child, ckey, parent, pkey, code in orphan:
        keys = {r[pkey] for r in t[parent]}
        kept = []
        for r in t[child]:
            if r[ckey] in keys:
                kept.append(r)
            else:
                quarantined.append((child, r["_rid"], code))
        t[child] = kept
    return t, quarantined
