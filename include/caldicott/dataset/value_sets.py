"""NHS England's permitted codes for the data set's value-set rules, keyed by rule code.

The codes are NHS England's own (``iapt_v2_0_value_sets.tsv`` beside this module, copied from the receiving side's
``validations.py``), so a code list is never typed by hand here: a rule and its test both read this file. The file
is written for v2.0; v2.1 changed three things this module applies on top:

* field names: ``SourceOfReferralMH`` is ``SourceOfReferralIAPT`` and ``ConsMediumUsed`` is ``ConsMechanism``
  (``iapt_v2_1_fields.tsv``, NHS Data Dictionary elements SOURCE OF REFERRAL FOR IMPROVING ACCESS TO PSYCHOLOGICAL
  THERAPIES, I101030, and CONSULTATION MECHANISM (MENTAL HEALTH), I201070);
* CONSULTATION MECHANISM (MENTAL HEALTH) replaced CONSULTATION MEDIUM USED. Its permitted national codes, per the
  NHS Data Dictionary (archive.datadictionary.nhs.uk, "DD Release June 2026", data_elements/
  consultation_mechanism_mental_health.html; v3.datadictionary.nhs.uk .../consultation_mechanism_de.asp for the
  descriptions): 01 face to face, 02 telephone, 04 talk type for a person unable to speak, 05 email, 09 text message
  (asynchronous), 10 instant messaging (synchronous), 11 video consultation, 12 message board (asynchronous),
  13 chat room (synchronous), 98 other (not listed). The v2.0 codes 03 (telemedicine), 06 (SMS) and 08 are gone;
* IDS00003 (data set version): the version being submitted (2.1 for a v2.1 file; the file says 2.0, written for v2.0).

The SOURCE OF REFERRAL FOR IAPT code list is the v2.0 list of IDS10118 (the element was renamed, and no v2.1 list
differing from it could be found in the sources available here: check against the Data Dictionary before live use).
``ISO639_1_LANG_CODES`` in the file stands for the ISO 639-1 two-letter language codes plus ``q1``..``q5``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

VALUE_SETS_PATH = Path(__file__).with_name("iapt_v2_0_value_sets.tsv")

#: v2.0 field name -> v2.1 field name (iapt_v2_1_fields.tsv)
V21_FIELD_NAMES = {"SourceOfReferralMH": "SourceOfReferralIAPT", "ConsMediumUsed": "ConsMechanism"}

#: CONSULTATION MECHANISM (MENTAL HEALTH) permitted national codes (NHS Data Dictionary; see the module doc).
CONS_MECHANISM_V21 = frozenset({"01", "02", "04", "05", "09", "10", "11", "12", "13", "98"})

#: ISO 639-1 two-letter language codes (184), what the receiving side's ISO639_1_LANG_CODES holds.
_ISO639_1_TEXT = """
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv
ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st
su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu"""
ISO639_1 = frozenset(_ISO639_1_TEXT.split())
LANGUAGE_CODES = ISO639_1 | {"q1", "q2", "q3", "q4", "q5"}


@dataclass(frozen=True)
class ValueSet:
    """One value-set rule: the table and (v2.1) field it checks, and the codes it permits."""

    rule_code: str
    table: str
    field: str
    codes: frozenset[str]
    source_field: str        # the field's name in the v2.0 file (differs for the two renamed fields)


def _codes(text: str) -> frozenset[str]:
    if text.startswith("ISO639_1_LANG_CODES"):
        return LANGUAGE_CODES
    return frozenset(c for c in text.split("|") if c)


@cache
def _load() -> dict[str, ValueSet]:
    with VALUE_SETS_PATH.open(newline="") as fh:
        rows = csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")
        out = {}
        for r in rows:
            code, field = r["rule_code"], r["field"]
            out[code] = ValueSet(code, r["table"], V21_FIELD_NAMES.get(field, field), _codes(r["permitted_values"]),
                                 field)
        return out


def value_sets(version: str = "2.1") -> dict[str, ValueSet]:
    """Every value-set rule, keyed by rule code, with the codes permitted for data set ``version``."""
    base = _load()
    if version == "2.0":
        return dict(base)
    out = dict(base)
    out["IDS20120"] = ValueSet("IDS20120", base["IDS20120"].table, "ConsMechanism", CONS_MECHANISM_V21,
                               base["IDS20120"].source_field)
    out["IDS00003"] = ValueSet("IDS00003", base["IDS00003"].table, "DatSetVer", frozenset({version}), "DatSetVer")
    return out


def codes(rule_code: str, version: str = "2.1") -> frozenset[str]:
    """The codes rule ``rule_code`` permits in data set ``version``."""
    return value_sets(version)[rule_code].codes
