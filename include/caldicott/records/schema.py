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
    Column("country", String(2), nullable=False, default="GB",
           comment="ISO 3166-1 alpha-2 country the practice processes data in (release gateway adequacy check)"),
)

#: Organisations that refer patients in, or that take a patient on (GP practices refer too, by their own ODS
#: code). The delivery columns are used by the transfer-of-care flow: where a receiving provider wants its
#: patient reports, exactly as for a GP practice (a provider with no usable channel is held, never sent plain).
organisation = Table(
    "organisation",
    metadata,
    Column("ods_code", String(10), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(30), nullable=False, comment="'gp', 'provider', 'commissioner', 'other'"),
    Column("country", String(2), nullable=False, default="GB",
           comment="ISO 3166-1 alpha-2 country the organisation processes data in (adequacy check)"),
    Column("channel", String(20), comment="'mesh', 'smime-email' or 'sftp' for patient reports; null: none known"),
    Column("mesh_mailbox", String(20), comment="MESH mailbox id for the mesh channel"),
    Column("mesh_workflow", String(50), comment="MESH workflow id the receiver expects"),
    Column("email", String(254), comment="NHSmail address for smime-email"),
    Column("certificate_pem", Text, comment="receiver's X.509 encryption certificate (PEM) for smime-email/sftp"),
    Column("connection_id", String(100), comment="Airflow connection id of the receiver's SFTP server"),
    Column("remote_path", String(300), comment="directory on the SFTP server"),
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
    # --- data set (IDS001) demographics beyond the basics; null where the service did not record them ---
    Column("gender_identity", String(1), comment="GenderIdentity: 1 male, 2 female, 3 non-binary, 4 other, X, Z"),
    Column("gender_same_at_birth", String(1), comment="GenderIdentitySameAtBirth: Y, N, X not known, Z not stated"),
    Column("ethnic_category_2021", String(3), comment="EthnicCategory2021 (NHS Data Dictionary 2021 census codes)"),
    Column("ex_armed_forces", String(2), comment="ExBAFIndicator"),
    Column("preferred_language", String(3), comment="LanguageCodePreferred: ISO 639-1 (two letters) or q1..q5"),
    Column("education_establishment", String(2), comment="EduEstabTypeIAPT"),
)
Index("ix_patient_nhs_number", patient.c.nhs_number)

#: IDS003 accommodation status, one row per recorded status.
accommodation_status = Table(
    "accommodation_status",
    metadata,
    Column("accommodation_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("accommodation_type", String(2), comment="AccommodationType"),
    Column("settled", String(1), comment="SettledAccommodationInd: Y, N, Z"),
    Column("recorded_date", Date, comment="AccommodationTypeDate"),
    Column("start_date", Date),
    Column("end_date", Date),
)
Index("ix_accommodation_patient", accommodation_status.c.local_patient_id)

#: IDS004 employment status and benefits, one row per recorded status.
employment_status = Table(
    "employment_status",
    metadata,
    Column("employment_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("employment_status", String(2), comment="EmployStatus"),
    Column("recorded_date", Date, comment="EmployStatusRecDate"),
    Column("weekly_hours", String(2), comment="WeekHoursWorked code"),
    Column("self_employed", String(1), comment="SelfEmployInd"),
    Column("sickness_absence", String(1), comment="SickAbsenceInd"),
    Column("statutory_sick_pay", String(1), comment="SSPInd"),
    Column("benefit_receipt", String(1), comment="BenefitRecInd"),
    Column("esa", String(1), comment="ESAInd"),
    Column("universal_credit", String(1), comment="UCInd"),
    Column("pip", String(1), comment="PIPInd"),
    Column("employment_support", String(2), comment="EmpSupportInd: Y, N, NA (not applicable)"),
    Column("employment_support_referral_date", Date, comment="EmpSupportReferral"),
    Column("employment_support_discharge_date", Date, comment="EmpSupportDischargeDate"),
)
Index("ix_employment_patient", employment_status.c.local_patient_id)

#: IDS007 disabilities.
disability = Table(
    "disability",
    metadata,
    Column("disability_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("disability_code", String(2), nullable=False, comment="DisabCode"),
)
Index("ix_disability_patient", disability.c.local_patient_id)

#: IDS011 social and personal circumstances (sexual orientation, religion, ...) as SNOMED CT concepts.
social_circumstance = Table(
    "social_circumstance",
    metadata,
    Column("circumstance_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("snomed_code", String(18), nullable=False, comment="SocPerCircumstance (SNOMED CT)"),
    Column("recorded_date", Date, comment="SocPerCircumstanceRecDate"),
)
Index("ix_circumstance_patient", social_circumstance.c.local_patient_id)

#: IDS012 overseas visitor charging category.
overseas_visitor = Table(
    "overseas_visitor",
    metadata,
    Column("visitor_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("charging_category", String(1), nullable=False, comment="OvsVisChCat"),
    Column("applicable_date", Date, comment="OvsVisChCatAppDate"),
)
Index("ix_visitor_patient", overseas_visitor.c.local_patient_id)

#: IDS601 previous diagnoses.
previous_diagnosis = Table(
    "previous_diagnosis",
    metadata,
    Column("diagnosis_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("scheme", String(2), nullable=False, comment="DiagSchemeInUse: 01 ICD-10 (4-6 chars), 04 SNOMED CT"),
    Column("code", String(18), nullable=False, comment="PrevDiag"),
    Column("diagnosis_date", Date, comment="DiagDate"),
)
Index("ix_diagnosis_patient", previous_diagnosis.c.local_patient_id)

#: IDS803 care clusters.
care_cluster = Table(
    "care_cluster",
    metadata,
    Column("cluster_id", String(40), primary_key=True),
    Column("local_patient_id", String(20), nullable=False),
    Column("cluster_code", String(2), nullable=False, comment="AMHCareClustCodeFin"),
    Column("start_at", DateTime, nullable=False, comment="UTC instant the assignment started"),
    Column("end_at", DateTime, comment="UTC instant it ended"),
)
Index("ix_cluster_patient", care_cluster.c.local_patient_id)

#: The service's clinicians and other care personnel (named on letters and patient reports; IDS902 by id only).
care_personnel = Table(
    "care_personnel",
    metadata,
    Column("care_pers_local_id", String(20), primary_key=True, comment="CarePersLocalId"),
    Column("display_name", String(200), nullable=False, comment="name as it appears on letters"),
    Column("role", String(100), comment="professional role, e.g. 'High intensity therapist'"),
    Column("email", String(254), comment="work address for a named contact"),
    Column("telephone", String(30)),
)

#: IDS902 care personnel qualifications.
care_personnel_qualification = Table(
    "care_personnel_qualification",
    metadata,
    Column("qualification_id", String(40), primary_key=True),
    Column("care_pers_local_id", String(20), nullable=False),
    Column("level", String(2), nullable=False, comment="QualAttainLevelIAPT"),
    Column("awarded_date", Date, comment="QualAwardedDate"),
    Column("planned_completion_date", Date, comment="QualPlannedCompletionDate"),
)

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
    Column("presenting_problem_significance", String(2), comment="PresCompCodSig"),
    Column("onset_month", String(7), comment="OnsetDate: year and month of symptoms onset, 'YYYY-MM'"),
    Column("previous_diagnosed_condition", String(1), comment="PrevDiagCondInd: Y, N, Z"),
    Column("risk_summary", Text, comment="risk information the clinician recorded (patient report on transfer)"),
)
Index("ix_referral_patient", referral.c.local_patient_id)

#: IDS105 onward referrals: the patient referred on, or discharged to another provider. Also what the
#: transfer-of-care flow sends a patient report for (to ``receiving_org_code``, an ``organisation``).
onward_referral = Table(
    "onward_referral",
    metadata,
    Column("onward_referral_id", String(40), primary_key=True),
    Column("service_request_id", String(30), nullable=False),
    Column("referred_at", DateTime, nullable=False, comment="UTC instant (OnwardReferDate/OnwardReferTime)"),
    Column("reason", String(2), nullable=False, comment="OnwardReferReason"),
    Column("receiving_org_code", String(10), comment="OrgIDReceiving: ODS code of the provider taking the patient"),
    Column("contact_care_pers_id", String(20), comment="named contact for the receiver (care_personnel)"),
)
Index("ix_onward_referral", onward_referral.c.service_request_id)
Index("ix_onward_referred_at", onward_referral.c.referred_at)

#: IDS108 waiting-time pauses.
waiting_time_pause = Table(
    "waiting_time_pause",
    metadata,
    Column("pause_id", String(40), primary_key=True, comment="PauseID"),
    Column("service_request_id", String(30), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    Column("reason", String(2), comment="PauseReason"),
)
Index("ix_pause_referral", waiting_time_pause.c.service_request_id)

#: IDS602 long-term physical health conditions, per referral.
long_term_condition = Table(
    "long_term_condition",
    metadata,
    Column("condition_id", String(40), primary_key=True),
    Column("service_request_id", String(30), nullable=False),
    Column("scheme", String(2), nullable=False, comment="FindSchemeInUse: 01 ICD-10, 04 SNOMED CT"),
    Column("code", String(18), nullable=False, comment="LongTermCondition"),
)
Index("ix_ltc_referral", long_term_condition.c.service_request_id)

#: IDS205 internet-enabled therapy logs (digital programmes the patient used, and clinician time spent on them).
internet_therapy_log = Table(
    "internet_therapy_log",
    metadata,
    Column("log_id", String(40), primary_key=True),
    Column("service_request_id", String(30), nullable=False),
    Column("start_date", Date, nullable=False, comment="StartDateIntEnabledTherLog"),
    Column("end_date", Date, comment="EndDateIntEnabledTherLog"),
    Column("programme", String(2), nullable=False, comment="IntEnabledTherProg"),
    Column("duration_minutes", Integer, comment="DurationIntEnabledTher (clinician time)"),
    Column("care_pers_local_id", String(20), comment="CarePersLocalId"),
    Column("integrated_software", String(1), comment="IntegratedSoftwareInd: Y, N"),
)
Index("ix_itl_referral", internet_therapy_log.c.service_request_id)
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
    # --- data set (IDS201 / the contact's one IDS202 care activity); null where not recorded ---
    Column("planned", String(1), comment="PlannedCareContIndicator: Y planned, N unplanned"),
    Column("short_notice_cancellation", String(1), comment="Cancellation: Y, N"),
    Column("ltc_service", String(1), comment="IAPTLTCServiceInd: Y integrated LTC service, N"),
    Column("digital_programme", String(2), comment="IntEnabledTherProg used at the contact"),
    Column("therapy_mode", String(2), comment="CareContPatientTherMode: 1 individual, 2 couple, 3 group, ..."),
    Column("group_participants", Integer, comment="NumGroupTherParticipants"),
    Column("group_facilitators", Integer, comment="NumGroupTherFacilitators"),
    Column("psychotropic_medication", String(2), comment="PsychMed"),
    Column("activity_location", String(3), comment="ActLocTypeCode"),
    Column("site_code", String(9), comment="SiteIDOfTreat (ODS site code)"),
    Column("treatment_language", String(3), comment="LanguageCodeTreat"),
    Column("interpreter_present", String(1), comment="InterpreterPresentInd"),
    Column("procedure_code", String(30), comment="CodeProcAndProcStatus (SNOMED CT) of the care activity"),
    Column("finding_scheme", String(2), comment="FindSchemeInUse of the care activity's coded finding"),
    Column("finding_code", String(18), comment="CodeFind"),
    Column("observation_code", String(18), comment="CodeObs (SNOMED CT)"),
    Column("observation_value", String(20), comment="ObsValue"),
    Column("observation_unit", String(20), comment="UnitMeasure (UCUM)"),
)
# a referral's contacts by time: the data set reads a month's contacts of its open referrals without touching their
# other months' rows, and counts each referral's whole-life treatment contacts from this index alone (attendance and
# appointment type are in it): at national scale that count took 3x as long through the table's rows
Index("ix_contact_referral", care_contact.c.service_request_id, care_contact.c.contact_at, care_contact.c.attend_code,
      care_contact.c.app_type)
Index("ix_contact_at", care_contact.c.contact_at)

coded_assessment = Table(
    "coded_assessment",
    metadata,
    Column("assessment_id", String(40), primary_key=True),
    Column("service_request_id", String(30), nullable=False),
    Column("care_contact_id", String(30), comment="contact at which it was taken (IDS607) or null (IDS606)"),
    Column("tool_code", String(20), nullable=False, comment="CodedAssToolType, SNOMED CT"),
    Column("score", Integer, comment="PersScore of a numeric scale item (null when score_text holds it)"),
    Column("score_text", String(10),
           comment="PersScore of a non-integer item as recorded (Y/N/NA answers, decimals): see the scale catalogue"),
    Column("assessed_at", DateTime, nullable=False, comment="UTC instant"),
)
# a referral's scores by time: a month's scores of the open referrals without touching their other months' rows
Index("ix_assessment_referral", coded_assessment.c.service_request_id, coded_assessment.c.assessed_at)

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
