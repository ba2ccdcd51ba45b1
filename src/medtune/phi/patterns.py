"""PHI patterns: the regular expressions for formatted identifiers (e-mail, URL, IP, SSN, phone, labelled ids,
card numbers, IBANs, VINs, plates, ZIP codes, street addresses, dates), the context cues of dates, and the check
digits (Luhn, IBAN mod-97, VIN). Names have their own module (medtune.phi.names)."""

from __future__ import annotations

import re

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA PR RI SC SD TN TX UT VT VA WA WV WI WY"
).split()
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|"
    "Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|"
    "Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|"
    "New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|"
    "South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|"
    "Wisconsin|Wyoming"
)
_STATE = rf"(?:{'|'.join(_STATES)}|{_STATE_NAMES})"
_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Ter|"
    r"Way|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Plaza|Alley|Crescent|Loop|Pike)"
)

# Toll-free numbers belong to organisations (hotlines), not to a person.
TOLL_FREE = {"800", "888", "877", "866", "855", "844", "833"}
# Public reference hosts: a link to them is a citation, not an identifier of a person.
_PUBLIC_SUFFIXES = (".gov", ".mil", ".int", ".nhs.uk", ".doi.org", ".wikipedia.org", ".wikidoc.org")


def public_host(host: str) -> bool:
    return ("." + host).endswith(_PUBLIC_SUFFIXES) or bool(re.search(r"\.gov\.[a-z]{2}$", host))


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


_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9))),
    **dict(zip("JKLMN", range(1, 6))),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10))),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_check_digit(vin: str) -> str:
    """The check digit (position 9) of a 17-character VIN."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin.upper(), _VIN_WEIGHTS))
    r = total % 11
    return "X" if r == 10 else str(r)


def vin_ok(vin: str) -> bool:
    vin = vin.upper()
    return (
        len(vin) == 17
        and all(c in _VIN_VALUES for c in vin)
        and vin[8] == vin_check_digit(vin)
        and any(c.isalpha() for c in vin)
        and any(c.isdigit() for c in vin)
    )


# ---------------------------------------------------------------- patterns

_NB = r"(?<![\w/.@-])"  # a number starts here: not inside a word, a decimal, a path or a code
_NA = r"(?![\w/@-]|[.,]\d)"  # and ends here
_EXT = r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,5})?"

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,6}"
    r"\.[A-Za-z]{2,24}"
)
URL = re.compile(
    r"(?i:\b(?:https?://|ftp://|www\.)[^\s<>\"'\]\[|{}]+"
    r"|\b[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9-]{1,63}){0,6}\.(?:com|org|net|io|info|biz|me|co)/"
    r"[^\s<>\"'\]\[|{}]*)"
)
IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)"
)
IPV6 = re.compile(
    r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?=[0-9A-Fa-f:]{0,39}::)[0-9A-Fa-f]{1,4}(?::{1,2}[0-9A-Fa-f]{1,4}){2,7})(?![\w:])"
)
SSN = re.compile(_NB + r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}" + _NA)
SSN_LABELED = re.compile(
    r"(?i:\bSSN|\bsocial\s+security(?:\s+(?:number|no\.?|#))?|\bSS\s?#)\s*(?:is|was|:|#)?\s*"
    r"(?P<v>(?!000|666|9\d\d)\d{3}[\s-]?(?!00)\d{2}[\s-]?(?!0000)\d{4})(?!\d)"
)
PHONE_PATTERNS = [
    re.compile(_NB + r"(?:\+?1[\s.-]?)?\(\s?(?P<a>[2-9]\d\d)\s?\)[\s.-]?[2-9]\d\d[\s.-]\d{4}" + _EXT + _NA),
    re.compile(_NB + r"(?:1-)?(?P<a>[2-9]\d\d)-[2-9]\d\d-\d{4}" + _EXT + _NA),
    re.compile(_NB + r"(?:1\.)?(?P<a>[2-9]\d\d)\.[2-9]\d\d\.\d{4}" + _EXT + _NA),
    re.compile(r"(?<![\w+])\+1[\s.-]?\(?(?P<a>[2-9]\d\d)\)?[\s.-]?[2-9]\d\d[\s.-]?\d{4}" + _EXT + _NA),
    re.compile(r"(?<![\w+])\+(?P<cc>[2-9]\d{0,2})(?:[\s.-]?\(?\d{1,4}\)?){2,6}" + _EXT + _NA),
]
PHONE_CUE = re.compile(
    r"(?i:\b(?:phone|ph|tel|telephone|cell|cellphone|mobile|mob|pager|beeper|call|text|"
    r"contact(?:\s+number)?|reached\s+at|number|home|work|whatsapp|fax|facsimile)\b\.?)"
)
PHONE_LOOSE = re.compile(_NB + r"(?:\+?1[\s.-]?)?(?:\(?(?P<a>[2-9]\d\d)\)?[\s.-]?)?[2-9]\d\d[\s.-]?\d{4}" + _EXT + _NA)
FAX_CUE = re.compile(r"(?i:\b(?:fax|facsimile|faxed|telefax)\b|\bF\s*:)")
VOICE_CUE = re.compile(r"(?i:\b(?:phone|tel|telephone|cell|mobile|pager|call|text|voice)\b)")

_ID_VALUE = r"(?P<v>(?=[A-Za-z0-9-]*\d)[A-Za-z0-9](?:[A-Za-z0-9]|[-/](?=[A-Za-z0-9])|\s(?=\d{2,}\b)){3,34})"
_SEP = r"(?:\s*(?:number|no\.?|num\.?|nbr|#|ID|id|identifier))?\s*(?:is|was|of|:|#|=|-|–)?\s*(?:[:#]\s*)?"


def _labeled(label: str) -> re.Pattern:
    return re.compile(r"(?i:" + label + r")" + _SEP + _ID_VALUE + r"(?![\w-])")


MRN = _labeled(
    r"\bMRN|\bMR\s?#|\bMR(?=\s*[:#]?\s*\d)|\bMR\s+(?:no\.?|number)|"
    r"\bmedical\s+record(?:\s+(?:number|no\.?|#))?|"
    r"\bmed\.?\s+rec\.?|\bchart\s+(?:number|no\.?|#)|\bhospital\s+(?:number|no\.?|#|ID)|"
    r"\bpatient\s+(?:ID|identifier|number|no\.?|#)|\bpt\.?\s+(?:ID|#)|\bunit\s+number|"
    r"\bencounter\s+(?:ID|number|no\.?)|\bvisit\s+(?:ID|number)|\baccession\s+(?:number|no\.?|#)"
)
HEALTH_PLAN = _labeled(
    r"\bmember\s+(?:ID|number|no\.?|#)|\bmembership\s+(?:ID|number)|"
    r"\bsubscriber\s+(?:ID|number|no\.?|#)|\bpolicy\s+(?:number|no\.?|#|ID)|"
    r"\binsurance\s+(?:ID|number|no\.?|#|policy|card)|\bhealth\s+plan(?:\s+beneficiary)?|"
    r"\bbeneficiary\s+(?:ID|number|no\.?)|\bmedicaid(?:\s+(?:ID|number|no\.?|#))?|"
    r"\bmedicare(?:\s+(?:ID|number|no\.?|#|beneficiary\s+identifier|card))?|\bMBI|\bHICN|"
    r"\bgroup\s+(?:number|no\.?|#)|\bplan\s+ID|\bBIN\s+number"
)
POLICY = _labeled(r"\bpolicy")  # 'claim submitted under policy HPX-44120983' (6 digits or more)
# A bare 'ID' after an insurer or plan word: 'Insurance card: UnitedHealthcare, ID 928374615'.
PLAN_ID = re.compile(
    r"(?i:\b(?:insurance|insurer|health\s+plan|coverage|medicaid|medicare|BCBS|blue\s+cross|aetna|"
    r"cigna|humana|united\s*healthcare|kaiser|anthem|tricare)\b[^.\n]{0,40}?\bID)\s*[:#]?\s*" + _ID_VALUE + r"(?![\w-])"
)
ACCOUNT = _labeled(
    r"\baccount(?:\s+(?:number|no\.?|#|ID))?|\bacct\.?|\bbilling\s+(?:account|number|ID)|"
    r"\binvoice\s+(?:number|no\.?|#)|\bbank\s+account|\bIBAN|\bcard\s+(?:number|no\.?)|"
    r"\bcredit\s+card(?:\s+(?:number|no\.?))?|\bdebit\s+card|\brouting\s+(?:number|no\.?)|"
    r"\bguarantor\s+(?:ID|number)"
)
DEVICE = _labeled(
    r"\bserial(?:\s+(?:number|no\.?|#))?|\bS/N|\bSN\b|\bdevice\s+(?:ID|identifier|serial|number)|"
    r"\bUDI|\bimplant\s+(?:ID|serial|number)|\bpump\s+(?:ID|serial)|\bmodel\s+number"
)
VIN_LABELED = re.compile(
    r"(?i:\bVIN|\bvehicle\s+identification\s+number)\s*(?:number|no\.?|#)?\s*(?:is|:|#)?\s*"
    r"(?P<v>[A-HJ-NPR-Za-hj-npr-z0-9]{17})(?![A-Za-z0-9])"
)
VIN = re.compile(r"(?<![A-Za-z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Za-z0-9])")
PLATE = re.compile(
    r"(?i:\blicen[cs]e\s+plate|\bplate|\btag|\bregistration)\s*(?:number|no\.?|#)?\s*"
    r"(?:is|was|reads|:|#)?\s*(?:(?:" + "|".join(_STATES) + r")\s+)?"
    r"(?P<v>(?=[A-Z0-9 -]*\d)(?=[A-Z0-9 -]*[A-Z])"
    r"[A-Z0-9]{1,4}[- ]?[A-Z0-9]{1,4}(?:[- ]?[A-Z0-9]{1,3})?)"
    r"(?![\w-])"
)
UDI = re.compile(r"\(01\)\d{14}(?:\(\d{2,4}\)[A-Za-z0-9-]{1,20}){0,5}")
CARD = re.compile(_NB + r"\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7}" + _NA)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
MBI = re.compile(
    r"(?<![\w-])[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d-?[AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d-?"
    r"[AC-HJKMNP-RT-Y]{2}\d{2}(?![\w-])"
)

ZIP_STATE = re.compile(r"\b(?:" + _STATE + r")\.?,?\s+(?P<v>\d{5}(?:-\d{4})?)(?![\w-])")
ZIP_LABELED = re.compile(
    r"(?i:\bzip(?:\s*code)?|\bpostal\s+code|\bpostcode)\s*(?:is|:|#)?\s*(?P<v>\d{5}(?:-\d{4})?)"
    r"(?![\w-])"
)
ZIP4 = re.compile(_NB + r"\d{5}-\d{4}" + _NA)
STREET = re.compile(
    r"(?<![\w.,/-])\d{1,6}[A-Za-z]?\s+(?:(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"
    r"(?:(?:[A-Z][a-z'’]+|\d{1,3}(?:st|nd|rd|th)|[A-Z]{2,})\s+){1,3}" + _STREET_SUFFIX + r"\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|Floor|Fl|#)\.?\s*#?\s*[A-Za-z0-9-]+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2}(?=,?\s+" + _STATE + r"\b))?"
)
PO_BOX = re.compile(r"(?i:\bP\.?\s?O\.?\s+Box|\bPost\s+Office\s+Box)\s+\d{1,6}")

_D = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
_Y = r"(?:1[89]\d\d|20\d\d)"
DATE_PATTERNS = [  # (kind, pattern): day = has day and month and year, md = month and day, my = month and year
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
DATE_CUE = re.compile(
    r"(?i:\b(?:DOB|D\.O\.B\.?|date\s+of\s+(?:birth|death|admission|discharge|service|visit|surgery|procedure|injury|"
    r"encounter|exam|onset)|born|birth(?:day|date)?|admit(?:ted)?|admission|re-?admitted|discharged?|died|death|"
    r"deceased|expired|passed\s+away|seen|visit(?:ed)?|appointment|appt|follow[- ]?up|presented|presentation|"
    r"hospitali[sz]ed|transferred|surgery|operated|underwent|biopsy|DOS|encounter|scheduled|last\s+seen|"
    r"tested\s+positive|delivered|injured|fell|signed|dictated|transcribed|LMP|EDD|due\s+date|"
    r"(?:last\s+)?menstrual\s+period|discontinued|dated|date|collected)\b)"
)
# Events that date a person's care when nothing in the sentence says it is a general statement.
DATE_WEAK_CUE = re.compile(
    r"(?i:\b(?:colonoscopy|endoscopy|mammogram|mammography|biopsy|CT|MRI|x-ray|ultrasound|echo(?:cardiogram)?|"
    r"EKG|ECG|labs?|vaccinated|vaccine|dose|shot|injection|cath(?:eterization)?|angiogram|transfusion|"
    r"pap(?:\s+smear)?|screening|test(?:ed)?|results?|MI|stroke|fracture|diagnosed|started|stopped|received|"
    r"last|since|on)\b)"
)
# Words that make a month-and-year a date of this person's care: 'last one Feb 2021', 'S/P CABG 10/2019'.
DATE_PERSONAL_CUE = re.compile(
    r"(?i:(?:\b|^)(?:last|s/p|status\s+post|hx|history\s+of|prior|previous|most\s+recent|"
    r"her|his|pt|patient)\b)"
)
DATE_BLOCK = re.compile(
    r"(?i:\b(?:FDA|approved|approval|published|guidelines?|recommendations?|studies|study|trials?|WHO|CDC|declared|"
    r"announced|launched|introduced|released|updated|revised|enacted|law|act|recalled|founded|established|"
    r"discovered|described|observed\s+(?:on|each)|celebrated|awareness|anniversary|attacks?|pandemic|epidemic|"
    r"outbreak|year|annually|every)\b)"
)
PERSON_MENTION = re.compile(r"(?i:\b(?:patient|pt|he|she|his|her|him|mr|mrs|ms|miss|my|our)\b)")


# ---------------------------------------------------------------- word sets


def word_set(words: str) -> frozenset:
    return frozenset(words.split())


WORD = re.compile(r"[a-z]+")
DIGIT = re.compile(r"\d")
