"""Transfer of care: a patient report to the provider taking the patient on (docs/transfer_of_care.md)."""
