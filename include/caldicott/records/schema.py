"""The clinical-records source: the tables Caldicott reads (and never writes, outside the demo).

In production this is a read-only view of the provider's patient management system; in the demo and
tests it is a SQLite file (or a PostgreSQL schema) filled by :mod:`caldicott.records.synth`. Columns
are named for what they mean to the service; the IAPT data set names are applied later, by the data
set builder, so one source serves every flow.

Deliberately few constraints: a real source holds bad data (duplicated NHS numbers, referrals whose
discharge precedes their receipt, scores out of range) and every flow must quarantine it rather than
crash, so the schema does not refuse it at the door.

Times: ``care_contact.contact_at`` and ``coded_assessment.assessed_at`` are UTC instants (naive
datetimes, documented as UTC) because reporting periods are Europe/London local dates; plain dates
(birth, referral received, discharge) are local calendar dates.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: GP practices the service knows, with how each wants its letters.
gp_practice = Table(
    "gp_practice",
    metadata,
    Column("ods_code", String(6), primary_key=True, comment="ODS code of the practice (GMPCodeReg)"),
    Column("name", String(200), nullable=False),
    Column("email", String(254), comment="NHSmail address for smime-email delivery"),
    Column("channel", String(20), nullable=False, comment="'smime-email' or 'mesh' (GP Connect Send Document)"),
    Column("mesh_mailbox", String(20), comment="MESH mailbox id for the mesh channel"),
    Column("certificate_pem", Text, comment="practice's X.509 encryption certificate (PEM) for smime-email"),
)

#: Organisations that refer patients in (GP practices refer too, by their own ODS code).
organisation = Table(
    "organisation",
    metadata,
    Column("ods_code", String(10), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(30), nullable=False, comment="'gp', 'provider', 'commissioner', 'other'"),
)

patient = Table(
    "patient",
    metadata,
    Column("local_patient_id", String(20), primary_key=True, comment="LocalPatientId, <= 20 chars"),
    Column("nhs_number", String(10), comment="10 digits; may be missing or (bad data) invalid"),
    Column("given_name", String(100), nullable=False),
    Column("family_name", String(100), nullable=False),
    Column("birth_date", Date),
    Column("postcode", String(10), comment="outward and inward parts separated by one space"),
    Column("address_line", String(200)),
    Column("gender", String(1), comment="IAPT Gender code: 1 male, 2 female, 9 indeterminate, X not known"),
    Column("ethnic_category", String(2), comment="NHS ethnic category code A..Z"),
    Column("email", String(254)),
    Column("patient_certificate_pem", Text, comment="patient's own S/MIME certificate, rarely held"),
    Column("copy_channel", String(20), nullable=False, default="email",
           comment="how the patient wants their copy: 'email' ([secure] gateway), 'smime', 'post'"),
    Column("gp_practice_code", String(6), comment="registered practice ODS code (may be missing)"),
    Column("gp_sharing_consent", Boolean, nullable=False, default=True,
           comment="False when the patient declined sharing with their GP at registration"),
    Column("gp_sharing_consent_date", Date),
    Column("dataset_objection_pre2020", Boolean,
           comment="True when, under data set v1.5 (before 1 Sept 2020), the patient asked not to be "
                   "included in national analyses"),
    Column("dataset_objection_date", Date),
)
Index("ix_patient_nhs_number", patient.c.nhs_number)

referral = Table(
    "referral",
    metadata,
    Column("service_request_id", String(30), primary_key=True, comment="ServiceRequestId"),
    Column("local_patient_id", String(20), nullable=False),
    Column("referrer_org_code", String(10), comment="ODS code of the referring organisation"),
    Column("source_of_referral", String(2), nullable=False, comment="SourceOfReferralIAPT code"),
    Column("commissioner_code", String(5), comment="OrgIDComm"),
    Column("received_date", Date, nullable=False, comment="ReferralRequestReceivedDate"),
    Column("presenting_problem", String(100), comment="presenting complaint, in words"),
    Column("presenting_problem_code", String(20), comment="ICD-10 code of the presenting complaint"),
    Column("assessment_plan", Text, comment="plan agreed at assessment (goes in the GP letter)"),
    Column("discharge_date", Date, comment="ServDischDate"),
    Column("end_code", String(2), comment="EndCode"),
    Column("discharge_recommendations", Text, comment="recommendations for the GP at discharge"),
)
Index("ix_referral_patient", referral.c.local_patient_id)
Index("ix_referral_received", referral.c.received_date)
Index("ix_referral_discharge", referral.c.discharge_date)

care_contact = Table(
    "care_contact",
    metadata,
    Column("care_contact_id", String(30), primary_key=True, comment="CareContactId"),
    Column("service_request_id", String(30), nullable=False),
    Column("contact_at", DateTime, nullable=False, comment="UTC instant of the appointment"),
    Column("duration_minutes", Integer),
    Column("app_type", String(2), nullable=False,
           comment="AppType: 01 assessment, 02 treatment, 03 assessment and treatment, 04 review and "
                   "treatment, 05 review without treatment, 06 enabling, 07 discharge"),
    Column("attend_code", String(1), nullable=False,
           comment="AttendOrDNACode: 5 attended on time, 6 attended late, 7 late not seen, "
                   "2 cancelled by patient, 3 did not attend, 4 cancelled by provider"),
    Column("cons_mechanism", String(2), nullable=False,
           comment="ConsMechanism: 01 face to face, 02 telephone, 04 video, 05 talk type, 06 online"),
    Column("therapy_type", String(2), comment="IAPT therapy type code of the care activity"),
    Column("clinician_id", String(20)),
    Column("clinical_summary", Text, comment="free-text session note; never in GP letters"),
)
Index("ix_contact_referral", care_contact.c.service_request_id)
Index("ix_contact_at", care_contact.c.contact_at)

coded_assessment = Table(
    "coded_assessment",
    metadata,
    Column("assessment_id", String(40), primary_key=True),
    Column("service_request_id", String(30), nullable=False),
    Column("care_contact_id", String(30), comment="contact at which it was taken (IDS607) or null (IDS606)"),
    Column("tool_code", String(20), nullable=False, comment="CodedAssToolType, SNOMED CT"),
    Column("score", Integer, nullable=False, comment="PersScore"),
    Column("assessed_at", DateTime, nullable=False, comment="UTC instant"),
)
Index("ix_assessment_referral", coded_assessment.c.service_request_id)

#: Contracts under which a referrer receives session updates (issue: referrer updates).
contract = Table(
    "contract",
    metadata,
    Column("contract_id", String(20), primary_key=True),
    Column("referrer_org_code", String(10), nullable=False),
    Column("name", String(200), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("transport", String(10), nullable=False, comment="'sftp' or 'mesh'"),
    Column("connection_id", String(100), comment="Airflow connection id of the SFTP peer"),
    Column("remote_path", String(300), comment="directory on the SFTP peer"),
    Column("mesh_mailbox", String(20)),
    Column("mesh_workflow", String(50)),
    Column("file_format", String(20), nullable=False, default="csv-v1", comment="'csv-v1' or 'fhir-r4-v1'"),
    Column("include_summaries", Boolean, nullable=False, default=False,
           comment="True only where the contract requires clinical summaries of each session"),
    Column("include_activity", Boolean, nullable=False, default=True,
           comment="monthly activity summary for invoicing"),
    Column("certificate_pem", Text, comment="referrer's certificate: when set, files are CMS-encrypted"),
)

SNOMED = {
    "PHQ9": "720433000",
    "GAD7": "445455005",
    "WSAS_WORK": "932581000000100",
    "WSAS_HOME": "932591000000103",
    "WSAS_SOCIAL": "932601000000109",
    "WSAS_PRIVATE": "932611000000106",
    "WSAS_RELATIONSHIPS": "932621000000100",
}
"""SNOMED CT codes of the coded scored assessments the service records (NHS England's assessment-scale catalogue)."""

SCORE_RANGES = {
    SNOMED["PHQ9"]: (0, 27),
    SNOMED["GAD7"]: (0, 21),
    **{SNOMED[k]: (0, 8) for k in SNOMED if k.startswith("WSAS")},
}
