"""Which opt-outs apply to the monthly data set's outputs, and the statement each run writes about them.

Outputs of the ``monthly_dataset`` flow and the rule for each (docs/monthly_dataset.md, which opt-out applies where):

* **mandated submission** (IAPT / NHS Talking Therapies data set to NHS England): required by law (Data
  Provision Notice under s259(5) Health and Social Care Act 2012). The national data opt-out does NOT apply
  to data required by law, and since 1 September 2020 patients cannot opt out of this data set
  specifically: NDOP patients are KEPT. NHS England applies the opt-out downstream.
* **pre-September-2020 objection** (data set v1.5): a patient who asked, before 1 September 2020, not to be
  included in national analyses. Configurable (:class:`Pre2020Rule`): by default the objection is honoured
  for referrals received before 1 September 2020 (the referral it was given in, including referrals
  spanning the change, per the transition guidance) and not for later referrals.
* **commissioner / local planning extract**: not required by law, not direct care: the national data
  opt-out APPLIES; patients whose status is unknown (no valid NHS number, or no reply yet) are left out too.

Every run writes :func:`statement` (rule → output → counts) beside its outputs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from caldicott.dataset.builder import Dataset, isin

CUTOVER = dt.date(2020, 9, 1)


class Pre2020Rule(StrEnum):
    REFERRALS_BEFORE_CUTOVER = "referrals_before_cutover"   # default: honour it for referrals before 1 Sep 2020
    WHOLE_PATIENT = "whole_patient"                           # leave the patient out of every submission
    IGNORE = "ignore"                                         # submit everything (legal advice says so)


MANDATED = "mandated_submission"
PLANNING = "commissioner_extract"

RULES = {
    "ndop_not_applied_required_by_law": {
        "output": MANDATED,
        "why": "Required by law (Data Provision Notice, s259(5) Health and Social Care Act 2012); the national "
               "data opt-out does not apply to data required by law. NHS England applies it downstream.",
    },
    "pre2020_dataset_objection": {
        "output": MANDATED,
        "why": "Before 1 September 2020 (data set v1.5) patients could ask not to be included in national "
               "analyses; the configured mode says which of their referrals are left out.",
    },
    "ndop_applied": {
        "output": PLANNING,
        "why": "Planning extract under a sharing agreement: not required by law and not direct care, so the "
               "national data opt-out applies (checked with NHS England over MESH, SPINE_NTT_UPHOLDING).",
    },
    "ndop_status_unknown_excluded": {
        "output": PLANNING,
        "why": "A patient whose opt-out status could not be checked (no valid NHS number, no reply) is left out.",
    },
}


#: Tables hanging off a referral (ServiceRequestId) and off a patient (LocalPatientId), v2.1 names.
REFERRAL_CHILDREN = ("IDS105OnwardReferral", "IDS108WaitingTimePauses", "IDS201CareContact", "IDS205InternetTherLog",
                     "IDS602LongTermCondition", "IDS603PresentingComplaints", "IDS606CodedScoreAssessmentRefer")
PATIENT_CHILDREN = ("IDS002GP", "IDS003AccommStatus", "IDS004EmpStatus", "IDS007DisabilityType",
                    "IDS011SocPerCircumstances", "IDS012OverseasVisitorChargCat", "IDS601MedHistPrevDiag",
                    "IDS803CareCluster")


def objectors(patients: pd.DataFrame) -> pd.Index:
    """Local ids of the patients whose pre-September-2020 objection stands: objected, and either before the
    cutover or on a date not recorded (an objection recorded without a date was, by definition of the field, made
    under the v1.5 data set, so it is honoured)."""
    obj = patients["dataset_objection_pre2020"].fillna(False).astype(bool).to_numpy()
    if "dataset_objection_date" in patients:
        when = pd.to_datetime(patients["dataset_objection_date"], errors="coerce")
        before = ((when < pd.Timestamp(CUTOVER)) | when.isna()).to_numpy(dtype=bool)
    else:
        before = np.ones(len(obj), bool)
    return pd.Index(patients["local_patient_id"][obj & before].astype(str))


def _remove_referrals(ds: Dataset, referral_ids: pd.Index, patient_ids: pd.Index) -> dict[str, int]:
    """Remove exactly these referrals and what belongs to them (their contacts, activities, scores, ...), and those
    of ``patient_ids`` left with no referral, with their patient-level records. Nothing else: a record of another
    patient that is already without its parent is left for screening, which quarantines it with its own code."""
    t = ds.tables
    counts: dict[str, int] = {}

    def keep(name: str, gone: np.ndarray) -> None:
        if name in t and gone.any():
            counts[name] = counts.get(name, 0) + int(gone.sum())
            ds.keep(name, ~gone)

    def col_in(name: str, col: str, values: Iterable[Any]) -> np.ndarray:
        if name not in t or col not in t[name].columns or not len(t[name]):
            return np.zeros(len(t.get(name, ())), bool)
        return t[name][col].astype(object).isin(list(values)).to_numpy(dtype=bool).copy()

    contacts: pd.Series | list[Any]
    acts: pd.Series | list[Any]
    contacts = t["IDS201CareContact"]["CareContactId"][col_in("IDS201CareContact", "ServiceRequestId",
                                                              referral_ids)] if "IDS201CareContact" in t else []
    acts = t["IDS202CareActivity"]["CareActId"][col_in("IDS202CareActivity", "CareContactId", contacts)] \
        if "IDS202CareActivity" in t else []
    keep("IDS607CodedScoreAssessmentAct", col_in("IDS607CodedScoreAssessmentAct", "CareActId", acts))
    keep("IDS202CareActivity", col_in("IDS202CareActivity", "CareContactId", contacts))
    for name in REFERRAL_CHILDREN:
        keep(name, col_in(name, "ServiceRequestId", referral_ids))
    keep("IDS101Referral", col_in("IDS101Referral", "ServiceRequestId", referral_ids))
    still = set(t["IDS101Referral"]["LocalPatientId"].astype(object).dropna())
    gone_patients = [p for p in patient_ids if p not in still]
    for name in PATIENT_CHILDREN:
        keep(name, col_in(name, "LocalPatientId", gone_patients))
    keep("IDS001MPI", col_in("IDS001MPI", "LocalPatientId", gone_patients))
    return counts


def apply_pre2020(ds: Dataset, patients: pd.DataFrame, mode: Pre2020Rule | str) -> dict[str, Any]:
    """Remove, in place, what the pre-2020 objection rule excludes; return counts (no ids).

    The counts are of what this rule removed, and only that: the objectors' referrals (all, or those received
    before the cutover), what belongs to them, and the objectors left with no referral.
    """
    mode = Pre2020Rule(mode)
    if mode == Pre2020Rule.IGNORE or "dataset_objection_pre2020" not in patients:
        return {"mode": mode.value, "patients": 0, "referrals": 0}
    who = objectors(patients)
    ref = ds.tables["IDS101Referral"]
    mine = ref["LocalPatientId"].astype(object).isin(list(who)).to_numpy(dtype=bool).copy()
    if mode == Pre2020Rule.REFERRALS_BEFORE_CUTOVER:
        mine &= (ref["ReferralRequestReceivedDate"] < pd.Timestamp(CUTOVER)).to_numpy(dtype=bool)
    ids = pd.Index(ref["ServiceRequestId"][mine].astype(object))
    removed = _remove_referrals(ds, ids, pd.Index(ref["LocalPatientId"][mine].astype(object).unique()))
    return {"mode": mode.value, "patients": removed.get("IDS001MPI", 0),
            "referrals": int(mine.sum()), "records_removed": removed}


#: The tables :func:`planning_extract` reads (the rest of a written month need not be read back for it).
PLANNING_TABLES = ("IDS001MPI", "IDS101Referral", "IDS201CareContact")


def planning_extract(ds: Dataset, *, org_provider: str) -> pd.DataFrame:
    """The commissioner / local planning extract: one row per referral, no direct identifiers.

    Carries the NHS number only in a column the caller drops after the opt-out filter (``_nhs``).
    """
    ref = ds.tables["IDS101Referral"]
    mpi = ds.tables["IDS001MPI"].drop_duplicates("LocalPatientId").set_index("LocalPatientId")
    cc = ds.tables["IDS201CareContact"]
    attended = cc["AttendOrDNACode"].isin(["5", "6"]).to_numpy(dtype=bool)
    per_ref = cc.assign(att=attended).groupby("ServiceRequestId", observed=True)["att"].agg(["size", "sum"])
    birth = ref["LocalPatientId"].map(mpi["PersonBirthDate"])
    age = ((pd.Timestamp(ds.period.first) - pd.to_datetime(birth)).dt.days // 365.25)
    band = pd.cut(age, [0, 18, 25, 35, 45, 55, 65, 200], right=False,
                  labels=["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]).astype(str)
    out = pd.DataFrame({
        "ReportingPeriod": ds.period.key, "OrgIDProv": org_provider, "OrgIDComm": ref["OrgIDComm"].to_numpy(),
        "ServiceRequestId": ref["ServiceRequestId"].to_numpy(),
        "ReferralReceivedMonth": ref["ReferralRequestReceivedDate"].dt.strftime("%Y-%m").to_numpy(),
        "SourceOfReferralIAPT": ref["SourceOfReferralIAPT"].to_numpy(),
        "Discharged": ref["ServDischDate"].notna().to_numpy(), "EndCode": ref["EndCode"].to_numpy(),
        "AgeBand": band.to_numpy(), "Gender": ref["LocalPatientId"].map(mpi["Gender"]).to_numpy(),
        "EthnicCategory": ref["LocalPatientId"].map(mpi["EthnicCategory"]).to_numpy(),
        "ContactsInMonth": ref["ServiceRequestId"].map(per_ref["size"]).fillna(0).astype(int).to_numpy(),
        "AttendedInMonth": ref["ServiceRequestId"].map(per_ref["sum"]).fillna(0).astype(int).to_numpy(),
        "_nhs": ref["LocalPatientId"].map(mpi["NHSNumber"]).to_numpy(),
    })
    return out


def apply_ndop(extract: pd.DataFrame, opted_out: set[str],
               checked: set[str] | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop opted-out patients (and those whose status is unknown) from the planning extract."""
    from caldicott.policy.ndop import filter_opted_out

    nhs = extract["_nhs"].astype(object)
    before = len(extract)
    kept = filter_opted_out(extract, "_nhs", opted_out)
    n_out = before - len(kept)
    unknown = kept["_nhs"].isna().to_numpy().copy()
    if checked is not None:
        unknown |= ~isin(kept["_nhs"], checked)
    kept = kept.loc[~unknown]
    counts = {"rows_before": before, "removed_ndop": n_out, "removed_unknown": int(unknown.sum()),
              "rows_after": len(kept), "patients_opted_out": len(set(nhs.dropna()) & opted_out)}
    return kept.drop(columns=["_nhs"]).reset_index(drop=True), counts


def statement(period_key: str, *, mandated_counts: dict[str, Any], pre2020: dict[str, Any],
              ndop_in_mandated: int | None, planning: dict[str, Any] | None, ndop_source: str) -> dict[str, Any]:
    """The opt-out statement for a run: which rule applied to which output, with counts (no patient data).

    ``ndop_in_mandated`` is None until NHS England's opt-out check has answered (shown as pending, never as a number).
    """
    applied = [
        {"rule": "ndop_not_applied_required_by_law", "output": MANDATED, **RULES["ndop_not_applied_required_by_law"],
         "counts": {"ndop_patients_kept_in_submission": ndop_in_mandated}},
        {"rule": "pre2020_dataset_objection", "output": MANDATED, **RULES["pre2020_dataset_objection"],
         "counts": pre2020},
    ]
    if planning is not None:
        applied += [
            {"rule": "ndop_applied", "output": PLANNING, **RULES["ndop_applied"],
             "counts": {k: planning[k] for k in ("rows_before", "removed_ndop", "rows_after")}},
            {"rule": "ndop_status_unknown_excluded", "output": PLANNING, **RULES["ndop_status_unknown_excluded"],
             "counts": {"removed_unknown": planning["removed_unknown"]}},
        ]
    return {"reporting_period": period_key, "ndop_check": ndop_source, "outputs": {MANDATED: mandated_counts},
            "rules": applied}
