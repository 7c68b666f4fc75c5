"""Non-routine disclosures: request types, which data categories each may include, legal bases.

The one place that says what a court, the police, a safeguarding partner, the DWP, a regulator, a
solicitor, a patient's nominee or a research partner may receive (Caldicott principles 2 and 3: use
confidential data only when necessary, and only the minimum necessary). The package builder
(:mod:`caldicott.disclosure.package`) includes only categories that are both asked for and allowed here;
the rest are withheld and listed, with this module's reason, in the package manifest and the approval
request, so the service manager sees what was held back and why.

Sources: ICO "Sharing personal data with law enforcement"; GMC "Confidentiality: good practice in handling
patient information" (2017) paras 9, 17, 63-70 and 87-94; UK Caldicott Guardian Council guidance; Data
Protection Act 2018 Schedule 1 (conditions) and Schedule 2 (exemptions); the seed documents' exceptions.
These are defaults for the service's information governance lead to confirm, not legal advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    """Kinds of data a package can contain; each maps to a fixed field list in the package builder."""

    DEMOGRAPHICS = "demographics"        # identity: name, NHS number, birth date, address, gender
    GP_DETAILS = "gp_details"            # registered GP practice
    REFERRALS = "referrals"              # referral and discharge dates, source, presenting problem, end code
    APPOINTMENTS = "appointments"        # when sessions were booked and whether attended (no content)
    OUTCOME_SCORES = "outcome_scores"    # PHQ-9, GAD-7, WSAS scores and when taken
    CARE_PLANS = "care_plans"            # assessment plan and discharge recommendations (free text)
    CLINICAL_NOTES = "clinical_notes"    # session notes (free text): the most sensitive category


CATEGORY_LABELS = {
    Category.DEMOGRAPHICS: "Identity and contact details",
    Category.GP_DETAILS: "Registered GP practice",
    Category.REFERRALS: "Referrals and discharge",
    Category.APPOINTMENTS: "Appointments and attendance (no session content)",
    Category.OUTCOME_SCORES: "Outcome measures (PHQ-9, GAD-7, WSAS)",
    Category.CARE_PLANS: "Care plans and discharge recommendations",
    Category.CLINICAL_NOTES: "Session notes",
}


class LegalBasis(StrEnum):
    """The legal basis the requester claims; the approver confirms it (or does not) in the form."""

    COURT_ORDER = "court_order"                      # order of a court or tribunal; Art 6(1)(c), 9(2)(f)
    CRIME_PREVENTION = "crime_prevention"            # DPA 2018 Sch 2 para 2; serious crime, public interest
    SAFEGUARDING = "safeguarding"                    # DPA 2018 Sch 1 para 18; Art 6(1)(e), 9(2)(b)/(g)
    STATUTORY_DUTY = "statutory_duty"                # a statute requires it (e.g. HSCA 2008 s64 for CQC)
    CONSENT = "consent"                              # the patient's explicit consent, in writing
    VITAL_INTERESTS = "vital_interests"              # Art 6(1)(d), 9(2)(c): life at risk, cannot consent
    RESEARCH_S251 = "research_s251"                  # COPI Regulations 2002 reg 5 (s251 NHS Act 2006)
    RESEARCH_DEIDENTIFIED = "research_deidentified"  # Art 6(1)(e), 9(2)(j); de-identified extract


LEGAL_BASIS_TEXT = {
    LegalBasis.COURT_ORDER: "Order of a court or tribunal (UK GDPR Art 6(1)(c), Art 9(2)(f); DPA 2018 Sch 2 para 5)",
    LegalBasis.CRIME_PREVENTION: "Prevention or detection of crime (DPA 2018 Sch 2 para 2; Sch 1 para 10), "
                                 "serious crime, disclosure in the public interest",
    LegalBasis.SAFEGUARDING: "Safeguarding of children and individuals at risk (DPA 2018 Sch 1 para 18; "
                             "Children Act 1989/2004, Care Act 2014 s42-45)",
    LegalBasis.STATUTORY_DUTY: "A statutory duty or power to require the information (e.g. Health and Social "
                               "Care Act 2008 s63-64 for the CQC; Social Security Administration Act 1992)",
    LegalBasis.CONSENT: "The patient's explicit written consent (UK GDPR Art 9(2)(a); common-law duty)",
    LegalBasis.VITAL_INTERESTS: "Vital interests: risk to life, the patient cannot consent (Art 6(1)(d), 9(2)(c))",
    LegalBasis.RESEARCH_S251: "Section 251 support (Health Service (Control of Patient Information) "
                              "Regulations 2002 reg 5); national data opt-out applied",
    LegalBasis.RESEARCH_DEIDENTIFIED: "Research in the public interest with de-identified data (UK GDPR "
                                      "Art 6(1)(e), Art 9(2)(j); DPA 2018 Sch 1 para 4); national data opt-out applied",
}


@dataclass(frozen=True)
class RequestTypePolicy:
    """What one kind of request may receive and on what footing."""

    label: str
    allowed: frozenset[Category]
    legal_bases: frozenset[LegalBasis]
    needs_patient: bool = True          # about one named patient (False: a cohort by date range)
    deidentify: bool = False            # names, addresses, NHS numbers and birth dates removed
    ndop_applies: bool = False          # the national data opt-out applies (research and planning)
    notify_patient_by_default: bool = True  # "no surprises": tell the patient unless a reason not to
    why: str = ""


_ID = Category.DEMOGRAPHICS
_ALL = frozenset(Category)

POLICIES: dict[str, RequestTypePolicy] = {
    "court_order": RequestTypePolicy(
        "Court order or witness summons", _ALL, frozenset({LegalBasis.COURT_ORDER}),
        why="a court may order any part of the record; disclose only what the order specifies"),
    "police": RequestTypePolicy(
        "Police request (no court order)",
        frozenset({_ID, Category.GP_DETAILS, Category.REFERRALS, Category.APPOINTMENTS}),
        frozenset({LegalBasis.CRIME_PREVENTION, LegalBasis.CONSENT, LegalBasis.VITAL_INTERESTS}),
        why="without an order, police receive identity and contact facts; clinical content needs a court order "
            "or the patient's consent"),
    "safeguarding": RequestTypePolicy(
        "Safeguarding referral or enquiry",
        frozenset({_ID, Category.GP_DETAILS, Category.REFERRALS, Category.APPOINTMENTS, Category.CARE_PLANS,
                   Category.CLINICAL_NOTES}),
        frozenset({LegalBasis.SAFEGUARDING, LegalBasis.VITAL_INTERESTS, LegalBasis.CONSENT}),
        why="the duty to share for safeguarding is as important as the duty to protect (principle 7); "
            "outcome scores are not needed to protect someone"),
    "dwp": RequestTypePolicy(
        "Department for Work and Pensions",
        frozenset({_ID, Category.REFERRALS, Category.APPOINTMENTS, Category.OUTCOME_SCORES}),
        frozenset({LegalBasis.CONSENT, LegalBasis.STATUTORY_DUTY}),
        why="benefit assessments need dates of treatment and functional measures, not session content"),
    "regulator": RequestTypePolicy(
        "Regulator's inspection (CQC, professional regulator)",
        frozenset({_ID, Category.REFERRALS, Category.APPOINTMENTS, Category.OUTCOME_SCORES, Category.CARE_PLANS,
                   Category.CLINICAL_NOTES}),
        frozenset({LegalBasis.STATUTORY_DUTY}),
        why="regulators' statutory powers cover the care record; GP registration is not needed"),
    "solicitor": RequestTypePolicy(
        "Solicitor acting for the patient or a third party",
        _ALL, frozenset({LegalBasis.CONSENT, LegalBasis.COURT_ORDER}),
        why="only with the patient's written consent (or an order), and only what the consent covers"),
    "patient_requested": RequestTypePolicy(
        "Disclosure the patient asked for (to a named third party)",
        _ALL, frozenset({LegalBasis.CONSENT}),
        why="the patient's own instruction; the patient already knows"),
    "research": RequestTypePolicy(
        "Research partner's extract (de-identified)",
        frozenset({_ID, Category.REFERRALS, Category.APPOINTMENTS, Category.OUTCOME_SCORES}),
        frozenset({LegalBasis.RESEARCH_DEIDENTIFIED, LegalBasis.RESEARCH_S251}),
        needs_patient=False, deidentify=True, ndop_applies=True, notify_patient_by_default=False,
        why="de-identified only: pseudonymous ids, age bands, months not dates; no free text; national data "
            "opt-out applied; patients are told through the service's privacy notice, not one by one"),
}


def policy_for(request_type: str) -> RequestTypePolicy:
    """The policy for ``request_type``; an unknown type has none (KeyError), so nothing can be built."""
    return POLICIES[request_type]


def split_categories(request_type: str, asked: list[str]) -> tuple[list[Category], dict[str, str]]:
    """(categories to include, {category asked for but withheld: why}) for a request of this type.

    Unknown category names are withheld too (never guessed at). Order follows :class:`Category`.
    """
    pol = policy_for(request_type)
    wanted = set(asked)
    include = [c for c in Category if c.value in wanted and c in pol.allowed]
    withheld = {a: f"not permitted for a {request_type} request ({pol.why})" for a in sorted(wanted)
                if a not in {c.value for c in include}}
    return include, withheld
