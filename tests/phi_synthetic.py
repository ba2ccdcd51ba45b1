"""A synthetic, seeded test set for the PHI detector (medtune.phi): invented clinical notes with planted identifiers
of every type (each with its type and character span), and clean medical sentences that look alike (doses, lab
values, codes, general dates, eponyms, statistics) in which nothing should be found.

Everything here is invented for the tests: the people, numbers and addresses do not exist (phone numbers use the
555-01xx range reserved for fiction, e-mails and URLs the example.* domains, IPs the documentation ranges).
The name pools are this file's own and differ on purpose from medtune.phi.FIRST_NAMES: some planted first names
are not on the detector's list.

Used by tests/test_phi.py and benchmarks/phi_recall.py (imported by path; not a conftest).
"""

from __future__ import annotations

import random
import re
import string

from medtune.phi.detect import TYPES  # the identifier types the detector reports

FIRST = (
    "Maria James Aisha Robert Mei Daniel Fatima Thomas Priya Michael Olga Carlos Hannah Kwame Sofia Ethan Leila "
    "Jonathan Chloe Samuel Ingrid Omar Yuki Patrick Amara Lucas Rosalind Desmond Ifeoma Bartholomew Svetlana "
    "Tobias Marisol Anneliese Thaddeus Ngozi Soren Eleni Caspian Wilhelmina Rashid Beatrix Dov Keziah Lachlan "
    "Nkechi Ptolemy Saoirse Ignatius Xiomara"
).split()
LAST = (
    "Okafor Lindqvist Ramirez Thompson Nakamura Kowalski Haddad O'Brien McAllister Fitzgerald Delacroix "
    "Abernathy Oyelaran Castellanos Whitfield Petrovic Achterberg Moreau Szymanski Gallagher Brennan Iwu "
    "Holloway Quintero Ferreira Mbeki Thornbury Castellano Ashworth Pemberton Eriksen Marchetti Nwosu "
    "Harrington Valdivia Kerrigan Blackwood Tanaka Lozano"
).split() + ["Van Buren", "de la Cruz"]
DRUGS = (
    "metformin lisinopril atorvastatin amoxicillin levothyroxine amlodipine omeprazole sertraline "
    "warfarin furosemide prednisone gabapentin insulin glargine apixaban"
).split()
CONDITIONS = (
    "type 2 diabetes",
    "hypertension",
    "asthma",
    "heart failure",
    "COPD",
    "atrial fibrillation",
    "chronic kidney disease",
    "major depression",
    "hypothyroidism",
    "osteoarthritis",
    "migraine",
    "community-acquired pneumonia",
    "cellulitis",
    "gout",
)
STREETS = (
    "Maple",
    "Oak",
    "Harbor",
    "Cedar",
    "Willow",
    "Juniper",
    "Lakeview",
    "Birchwood",
    "Chestnut",
    "Orchard",
    "Quarry",
    "Sycamore",
    "Hawthorne",
    "Meadow",
)
SUFFIXES = (
    "Street",
    "St",
    "Avenue",
    "Ave.",
    "Road",
    "Rd",
    "Lane",
    "Drive",
    "Boulevard",
    "Court",
    "Place",
    "Way",
    "Terrace",
    "Blvd",
)
CITIES = (
    ("Springfield", "IL"),
    ("Boston", "MA"),
    ("Columbus", "OH"),
    ("Tucson", "AZ"),
    ("Raleigh", "NC"),
    ("Madison", "WI"),
    ("Portland", "OR"),
    ("Albany", "NY"),
    ("Boise", "ID"),
    ("Austin", "TX"),
)
MONTHS = ("January February March April May June July August September October November December").split()


class _Builder:
    """Builds one text piece by piece, recording the span of every planted identifier."""

    def __init__(self):
        self.parts: list[str] = []
        self.spans: list[tuple[str, int, int]] = []
        self.n = 0

    def add(self, text: str, kind: str | None = None) -> "_Builder":
        if kind:
            self.spans.append((kind, self.n, self.n + len(text)))
        self.parts.append(text)
        self.n += len(text)
        return self

    def fill(self, template: str, values: dict[str, tuple[str | None, str]]) -> "_Builder":
        """template with {slot}s; values[slot] = (type or None, text)."""
        pos = 0
        for m in re.finditer(r"\{(\w+)\}", template):
            self.add(template[pos : m.start()])
            kind, text = values[m.group(1)]
            self.add(text, kind)
            pos = m.end()
        self.add(template[pos:])
        return self

    def done(self) -> dict:
        return {"text": "".join(self.parts), "spans": [list(s) for s in self.spans]}


# ---------------------------------------------------------------- identifier values


def _digits(rng, n):
    return "".join(rng.choice(string.digits) for _ in range(n))


def _area(rng):
    while True:
        a = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
        if a not in {"800", "888", "877", "866", "855", "844", "833", "911", "555"} and a[1:] != "11":
            return a


def phone(rng) -> str:
    a, line = _area(rng), f"01{rng.randint(0, 9)}{rng.randint(0, 9)}"
    fmt = rng.choice(
        [
            "({a}) 555-{l}",
            "{a}-555-{l}",
            "{a}.555.{l}",
            "+1 {a} 555 {l}",
            "+1-{a}-555-{l}",
            "1-{a}-555-{l}",
            "({a})555-{l}",
            "+44 20 7946 0{x}",
            "+33 1 45 67 8{y} {z}",
            "{a}-555-{l} ext. {e}",
        ]
    )
    return fmt.format(a=a, l=line, x=_digits(rng, 3), y=_digits(rng, 1), z=_digits(rng, 2), e=_digits(rng, 3))


def ssn(rng) -> str:
    while True:
        a = rng.randint(1, 899)
        if a != 666:
            break
    return f"{a:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        s = prefix + d
        total, double = 0, False
        for ch in reversed(s):
            v = int(ch)
            if double:
                v = v * 2 - 9 if v > 4 else v * 2
            total += v
            double = not double
        if total % 10 == 0:
            return s
    raise AssertionError


def iban(rng) -> str:
    bban = _digits(rng, 18)
    moved = bban + "DE00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    s = f"DE{check:02d}{bban}"
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


_VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def vin(rng) -> str:
    from medtune.phi import vin_check_digit

    body = [rng.choice(_VIN_CHARS) for _ in range(17)]
    body[0] = rng.choice("1245")
    body[8] = "0"
    body[8] = vin_check_digit("".join(body))
    return "".join(body)


def mbi(rng) -> str:
    letters = "ACDEFGHJKMNPQRTUVWXY"
    an = letters + string.digits
    return (
        f"{rng.randint(1, 9)}{rng.choice(letters)}{rng.choice(an)}{rng.randint(0, 9)}-{rng.choice(letters)}"
        f"{rng.choice(an)}{rng.randint(0, 9)}-{rng.choice(letters)}{rng.choice(letters)}{_digits(rng, 2)}"
    )


def person(rng, style=None) -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    style = style or rng.choice(["fl", "fl", "fl", "fml", "fl-hyph"])
    if style == "fml":
        return f"{f} {rng.choice(string.ascii_uppercase)}. {last}"
    if style == "fl-hyph":
        return f"{f} {last}-{rng.choice(LAST).split()[-1]}"
    return f"{f} {last}"


def date_text(rng) -> str:
    y, m, d = rng.randint(1930, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [
            f"{m:02d}/{d:02d}/{y}",
            f"{m}/{d}/{y}",
            f"{y}-{m:02d}-{d:02d}",
            f"{MONTHS[m - 1]} {d}, {y}",
            f"{d} {MONTHS[m - 1]} {y}",
            f"{MONTHS[m - 1][:3]}. {d}, {y}",
            f"{m}/{d}/{y % 100:02d}",
            f"{MONTHS[m - 1]} {d}",
            f"{MONTHS[m - 1]} {y}",
            f"{d:02d}.{m:02d}.{y}",
        ]
    )


def street(rng) -> str:
    s = f"{rng.randint(1, 9999)} {rng.choice(['', 'N. ', 'W. ', 'East '])}{rng.choice(STREETS)} {rng.choice(SUFFIXES)}"
    r = rng.random()
    if r < 0.25:
        s += f", Apt {rng.randint(1, 40)}{rng.choice('ABCD')}"
    elif r < 0.4:
        s += f", Suite {rng.randint(100, 990)}"
    elif r < 0.5:
        s = f"P.O. Box {rng.randint(10, 99999)}"
    return s


def zip_code(rng) -> str:
    z = f"{rng.randint(1001, 99950):05d}"
    return z + (f"-{rng.randint(1, 9999):04d}" if rng.random() < 0.3 else "")


def _ip(rng) -> str:
    if rng.random() < 0.2:
        return f"2001:db8::{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}"
    base = rng.choice(["192.0.2", "198.51.100", "203.0.113", "10.0", "172.16", "192.168"])
    while base.count(".") < 3:
        base += f".{rng.randint(0, 254)}"
    return base


def url(rng, first, last) -> str:
    return rng.choice(
        [
            f"https://www.example.com/patients/{first.lower()}{last.lower()[:1]}",
            f"http://portal.example.org/chart?id={_digits(rng, 6)}",
            f"www.example.net/~{first.lower()}",
            f"example.com/u/{first.lower()}.{last.lower()}",
            f"https://photos.example.com/albums/{_digits(rng, 5)}",
            f"https://www.facebook.example/{first.lower()}.{last.lower()}{_digits(rng, 2)}",
        ]
    )


def email(rng, first, last) -> str:
    user = (
        rng.choice(
            [f"{first}.{last}", f"{first[0]}{last}{_digits(rng, 2)}", f"{first}_{last}+clinic", f"{last}{first[:2]}"]
        )
        .lower()
        .replace("'", "")
        .replace(" ", "")
    )
    return f"{user}@{rng.choice(['example.com', 'mail.example.org', 'example.net', 'clinic.example.edu'])}"


def plate(rng) -> str:
    L = string.ascii_uppercase
    return rng.choice(
        [
            f"{rng.randint(1, 9)}{''.join(rng.choices(L, k=3))}{_digits(rng, 3)}",
            f"{''.join(rng.choices(L, k=3))}-{_digits(rng, 4)}",
            f"{''.join(rng.choices(L, k=3))} {_digits(rng, 3)}",
        ]
    )


def device_id(rng) -> str:
    L = string.ascii_uppercase
    return rng.choice(
        [
            f"{''.join(rng.choices(L, k=3))}{_digits(rng, 6)}",
            f"SN{_digits(rng, 8)}",
            f"{_digits(rng, 1)}X{_digits(rng, 1)}-{_digits(rng, 5)}-{rng.choice(L)}",
            f"DEV-{_digits(rng, 4)}-{_digits(rng, 4)}",
            f"(01)0{_digits(rng, 13)}(17){_digits(rng, 6)}(10){''.join(rng.choices(L, k=2))}{_digits(rng, 4)}",
        ]
    )


# ---------------------------------------------------------------- planted records


def _name_record(rng) -> dict:
    b = _Builder()
    first, last = rng.choice(FIRST), rng.choice(LAST)
    full = person(rng)
    cond, drug = rng.choice(CONDITIONS), rng.choice(DRUGS)
    age = str(rng.randint(19, 88))
    t = rng.randrange(18)
    if t == 0:
        b.fill("Mr. {n} was seen today for follow-up of his {c}.", {"n": ("NAME", last), "c": (None, cond)})
    elif t == 1:
        b.fill("Mrs. {n} reports that the {d} upsets her stomach.", {"n": ("NAME", full), "d": (None, drug)})
    elif t == 2:
        b.fill("Patient: {n}\nReason for visit: {c}.", {"n": ("NAME", full), "c": (None, cond)})
    elif t == 3:
        b.fill("Patient name: {n}. Allergies: none known.", {"n": ("NAME", f"{last}, {first}")})
    elif t == 4:
        b.fill(
            "{n} is a {a}-year-old woman with {c} who presents with fatigue.",
            {"n": ("NAME", full), "a": (None, age), "c": (None, cond)},
        )
    elif t == 5:
        b.fill(
            "{n}, a {a}-year-old man, was started on {d}.", {"n": ("NAME", full), "a": (None, age), "d": (None, drug)}
        )
    elif t == 6:
        b.fill("She was accompanied by her daughter, {n}, who helps with her medications.", {"n": ("NAME", full)})
    elif t == 7:
        b.fill("Electronically signed by {n}, MD on behalf of the care team.", {"n": ("NAME", full)})
    elif t == 8:
        b.fill("Referred by Dr. {n} for evaluation of {c}.", {"n": ("NAME", last), "c": (None, cond)})
    elif t == 9:
        b.fill("Emergency contact: {n} (brother).", {"n": ("NAME", full)})
    elif t == 10:
        b.fill("{n} reports worsening shortness of breath since last week.", {"n": ("NAME", first)})
    elif t == 11:
        b.fill("Dear {n},\nYour test results are ready.", {"n": ("NAME", first)})
    elif t == 12:
        b.fill(
            "PATIENT: {n}\nDIAGNOSIS: {c}",
            {"n": ("NAME", f"{last.upper()}, {first.upper()}"), "c": (None, cond.upper())},
        )
    elif t == 13:
        b.fill("Spoke with {n} about the biopsy results by telephone.", {"n": ("NAME", full)})
    elif t == 14:
        b.fill("The patient, {n}, denies chest pain.", {"n": ("NAME", full)})
    elif t == 15:
        b.fill(
            "{n} was admitted with {c} and treated with {d}.",
            {"n": ("NAME", full), "c": (None, cond), "d": (None, drug)},
        )
    elif t == 16:
        b.fill("Her husband {n} will drive her home after the procedure.", {"n": ("NAME", full)})
    else:
        b.fill("Nursing note - {n}, RN: vitals stable, tolerating {d}.", {"n": ("NAME", full), "d": (None, drug)})
    return b.done()


def _typed_record(rng, kind: str) -> dict:
    b = _Builder()
    first, last = rng.choice(FIRST), rng.choice(LAST).replace(" ", "")
    cond, drug = rng.choice(CONDITIONS), rng.choice(DRUGS)
    t = rng.randrange(4)
    if kind == "PHONE":
        v = phone(rng)
        tpl = [
            "Please call the patient at {v} with the results.",
            "Phone: {v}\nPreferred contact: mornings.",
            "Her daughter can be reached at {v} if she does not answer.",
            "Cell {v}; okay to leave a message.",
        ][t]
    elif kind == "FAX":
        v = phone(rng).replace(" ext. ", " x")
        tpl = [
            "Fax: {v}\nAttention: records department.",
            "Please fax the {d} prior authorization to {v}.",
            "Send the referral by fax to {v} today.",
            "Records were faxed to {v} on request.",
        ][t]
    elif kind == "EMAIL":
        v = email(rng, first, last)
        tpl = [
            "Email: {v}",
            "Send the lab results to {v} when available.",
            "Patient prefers contact by e-mail ({v}).",
            "Contact <{v}> about the appointment.",
        ][t]
    elif kind == "SSN":
        v = ssn(rng)
        if t == 1:
            v = v.replace("-", " ")
        elif t == 2:
            v = v.replace("-", "")
        tpl = [
            "SSN: {v}",
            "Social security number {v} on file.",
            "SSN {v} verified at registration.",
            "Registration form lists {v} as the social security number.",
        ][t]
    elif kind == "MRN":
        v = rng.choice(
            [
                _digits(rng, 8),
                _digits(rng, 7),
                f"A{_digits(rng, 7)}",
                f"H-{_digits(rng, 6)}",
                f"{_digits(rng, 3)}-{_digits(rng, 2)}-{_digits(rng, 2)}",
            ]
        )
        tpl = [
            "MRN: {v}\nAdmitting diagnosis: {c}.",
            "Medical record number {v}.",
            "MR# {v} - {c}, stable.",
            "Patient ID {v}; chart reviewed before the visit.",
        ][t]
    elif kind == "HEALTH_PLAN":
        v = rng.choice(
            [f"XGH{_digits(rng, 9)}", _digits(rng, 9), f"W{_digits(rng, 9)}", mbi(rng), f"PLC-{_digits(rng, 7)}"]
        )
        tpl = [
            "Member ID: {v}",
            "Insurance ID {v}, group coverage active.",
            "Medicare number {v} on file.",
            "Policy number {v} covers the {d}.",
        ][t]
    elif kind == "ACCOUNT":
        r = rng.random()
        if r < 0.25:
            v = luhn_complete("4" + _digits(rng, 14))
            v = " ".join(v[i : i + 4] for i in range(0, 16, 4))
            tpl = "Paid the copay with card {v}."
        elif r < 0.4:
            v = iban(rng)
            tpl = "Refund to {v} has been issued."
        else:
            v = rng.choice(
                [_digits(rng, 10), f"{_digits(rng, 2)}-{_digits(rng, 5)}-{_digits(rng, 1)}", f"ACC{_digits(rng, 7)}"]
            )
            tpl = [
                "Account number {v} has a balance.",
                "Acct #: {v}",
                "Billing account {v} was updated.",
                "Please reference account no. {v} when you call.",
            ][t]
    elif kind == "DATE":
        v = date_text(rng)
        tpl = [
            "DOB {v}",
            "She was admitted on {v} with {c}.",
            "Discharged {v} in stable condition.",
            "Date of birth: {v}",
            "He died on {v} at home.",
            "Seen in clinic on {v} for {c}.",
            "Follow-up appointment on {v}.",
            "Surgery on {v} was uncomplicated.",
        ][rng.randrange(8)]
    elif kind == "ADDRESS":
        v = street(rng)
        city, st = rng.choice(CITIES)
        tpl = [
            "Lives at {v} with her sister.",
            "Address: {v}",
            "Home address is {v}, " + f"{city}, {st}.",
            "Patient moved to {v} last month.",
        ][t]
    elif kind == "ZIP":
        v = zip_code(rng)
        city, st = rng.choice(CITIES)
        tpl = [f"{city}, {st} " + "{v}", "ZIP code {v}", "Zip: {v}", f"Mailing city {city}, {st} " + "{v}."][t]
    elif kind == "URL":
        v = url(rng, first, last)
        tpl = [
            "Patient blog: {v}",
            "Photos of the rash were uploaded to {v} by the family.",
            "See {v} for the shared care plan.",
            "Personal page {v} lists her medications.",
        ][t]
    elif kind == "IP":
        v = _ip(rng)
        tpl = [
            "Portal login from IP {v}.",
            "Telehealth session connected from {v}.",
            "Access log: {v} viewed the chart.",
            "Device uploads readings from {v} nightly.",
        ][t]
    elif kind == "VEHICLE":
        if rng.random() < 0.55:
            v = vin(rng)
            tpl = [
                "VIN: {v}",
                "Vehicle identification number {v} involved in the collision.",
                "Car ({v}) was towed after the crash.",
                "Insurance report lists VIN {v}.",
            ][t]
        else:
            v = plate(rng)
            tpl = [
                "License plate {v} noted by EMS.",
                "Plate number: {v}",
                "Parked car with license plate {v} in the garage.",
                "Tag number {v} on the accident report.",
            ][t]
    elif kind == "DEVICE":
        v = device_id(rng)
        tpl = [
            "Pacemaker serial number {v}.",
            "Insulin pump S/N: {v}",
            "Device ID {v} paired with the phone.",
            "Implant serial {v} recorded in the operative note.",
        ][t]
    else:
        raise ValueError(kind)
    b.fill(tpl, {"v": (kind, v), "c": (None, cond), "d": (None, drug)})
    return b.done()


def _combined_record(rng) -> dict:
    """A longer note with several identifiers."""
    b = _Builder()
    first, last = rng.choice(FIRST), rng.choice(LAST).replace(" ", "")
    city, st = rng.choice(CITIES)
    b.fill(
        "Patient: {n}\nDOB: {dob}\nMRN: {mrn}\nAddress: {a}, " + f"{city}, {st} " + "{z}\nPhone: {p}\n"
        "Assessment: {c}, controlled on {d}.",
        {
            "n": ("NAME", f"{first} {last}"),
            "dob": ("DATE", f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1930, 2005)}"),
            "mrn": ("MRN", _digits(rng, 8)),
            "a": ("ADDRESS", street(rng)),
            "z": ("ZIP", zip_code(rng)),
            "p": ("PHONE", phone(rng)),
            "c": (None, rng.choice(CONDITIONS)),
            "d": (None, rng.choice(DRUGS)),
        },
    )
    return b.done()


def planted(seed: int = 0, per_type: int = 24, names: int = 60, combined: int = 12) -> list[dict]:
    """Records {"text", "spans": [[type, start, end], ...]} with identifiers planted at known spans."""
    rng = random.Random(seed)
    out = [_name_record(rng) for _ in range(names)]
    for kind in TYPES[1:]:
        out += [_typed_record(rng, kind) for _ in range(per_type)]
    out += [_combined_record(rng) for _ in range(combined)]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- clean sentences

_CLEAN_TEMPLATES = [
    "Take {dose} mg of {drug} twice daily for {n} days.",
    "The usual starting dose of {drug} is {dose} mg once daily, increased after {n} weeks if needed.",
    "An HbA1c of {a1c}% or higher on two tests confirms diabetes.",
    "Aim for an LDL below {ldl} mg/dL in people with coronary disease.",
    "ICD-10 code {icd} is used for {cond}.",
    "CPT code {cpt} covers an established outpatient visit.",
    "Blood pressure of {sbp}/{dbp} mmHg or higher is considered stage 2 hypertension.",
    "The condition affects about 1 in {stat} births.",
    "Roughly {pct}% of adults over {age} have {cond}.",
    "{drug} was approved by the FDA in {year}.",
    "The {year} guidelines recommend screening adults aged {age} to 75.",
    "In {year}, the WHO added {drug} to its list of essential medicines.",
    "The vaccine was approved by the FDA on {month} {day}, {year}.",
    "World Health Day is observed on April 7 each year.",
    "Guidelines published in {month} {year} lowered the screening age to {age}.",
    "{eponym} is a chronic condition that usually progresses slowly.",
    "People with {eponym} may need lifelong follow-up with a specialist.",
    "Symptoms of {eponym} often begin between ages {age} and {age2}.",
    "Mutations in {gene} increase the risk of several cancers.",
    "A potassium level of {k} mEq/L is within the normal range.",
    "Give {dose} mg/kg every {n} hours, not exceeding {maxdose} mg per day.",
    "The test has a sensitivity of {pct}% and a specificity of {pct2}%.",
    "Dilute to 1:{stat} before use and store at 2-8 °C.",
    "A heart rate of {hr} beats per minute at rest is normal for adults.",
    "Call 911 or go to the emergency room if chest pain lasts more than {n} minutes.",
    "The Mayo Clinic and Johns Hopkins Hospital both offer {eponym} programs.",
    "Between {year} and {year2}, the incidence of {cond} rose by {pct}%.",
    "Infuse {dose} mL of normal saline over {n} minutes.",
    "NDC {ndc} is the code for the 10 mg tablet.",
    "Serum creatinine of {cr} mg/dL suggests reduced kidney function.",
    "The HLA-B27 gene is linked to ankylosing spondylitis.",
    "Down syndrome is caused by an extra copy of chromosome 21.",
    "The Glasgow Coma Scale ranges from 3 to 15.",
    "A score of {n} on the PHQ-9 indicates moderate depression.",
    "For more information, call the hotline at 1-800-555-0100.",
    "Stage III disease has spread to nearby lymph nodes in {pct}% of cases.",
    "Check the INR every {n} weeks while taking warfarin; the target is 2.0 to 3.0.",
    "Version 2.1.3 of the protocol added a second dose at day {n}.",
    "Appointments are available Monday to Friday from 8:30 to 17:00.",
    "On {month} {day}, {year}, the outbreak was declared a pandemic.",
]
EPONYMS = (
    "Parkinson disease",
    "Parkinson's disease",
    "Hodgkin lymphoma",
    "Crohn's disease",
    "Addison's disease",
    "Graves disease",
    "Cushing syndrome",
    "Hashimoto thyroiditis",
    "Bell's palsy",
    "Lou Gehrig's disease",
    "Alzheimer's disease",
    "Huntington disease",
    "Wilson disease",
    "Guillain-Barre syndrome",
    "Charcot-Marie-Tooth disease",
    "Marfan syndrome",
    "Turner syndrome",
    "Kawasaki disease",
    "Raynaud phenomenon",
    "Sjogren syndrome",
    "Tourette syndrome",
    "Paget disease of bone",
    "Creutzfeldt-Jakob disease",
    "Stevens-Johnson syndrome",
    "Barrett esophagus",
    "Ewing sarcoma",
    "Kaposi sarcoma",
    "Marcus Gunn pupil",
    "Pierre Robin sequence",
    "Gilbert syndrome",
    "Tay-Sachs disease",
    "Meniere disease",
    "Dupuytren contracture",
    "Legg-Calve-Perthes disease",
    "Wolff-Parkinson-White syndrome",
    "Arnold-Chiari malformation",
    "Lambert-Eaton syndrome",
    "Ramsay Hunt syndrome",
    "Von Willebrand disease",
    "Klinefelter syndrome",
    "Williams syndrome",
    "Edwards syndrome",
    "Nelson syndrome",
    "Leigh syndrome",
)
GENES = ("BRCA1", "BRCA2", "TP53", "CFTR", "APOE", "MLH1", "KRAS", "EGFR", "HER2", "JAK2", "BCR-ABL1", "HFE")
ICD = ("E11.9", "I10", "J45.909", "N18.3", "F32.1", "M17.11", "K21.9", "E03.9", "I48.91", "J18.9", "L03.115", "M10.9")


def all_clean(seed: int = 0) -> list[str]:
    """The generated clean sentences and every hand-written clean set."""
    return clean(seed) + [
        line for block in (HELDOUT_CLEAN, HELDOUT2_CLEAN, HELDOUT4_CLEAN) for line in block.strip().splitlines()
    ]


def clean(seed: int = 0, n: int = 200) -> list[str]:
    """Sentences with no identifier in them that look like ones that have (numbers, codes, dates, eponyms)."""
    rng = random.Random(seed + 1)
    out, seen = [], set()
    i = 0
    while len(out) < n:
        tpl = _CLEAN_TEMPLATES[i % len(_CLEAN_TEMPLATES)]
        i += 1
        year = rng.randint(1950, 2024)
        s = tpl.format(
            dose=rng.choice([5, 10, 20, 25, 40, 50, 250, 500, 850, 1000]),
            drug=rng.choice(DRUGS),
            n=rng.randint(2, 14),
            a1c=rng.choice(["6.5", "7.2", "8.0", "9.4"]),
            ldl=rng.choice([70, 100, 130]),
            icd=rng.choice(ICD),
            cond=rng.choice(CONDITIONS),
            cpt=rng.choice([99213, 99214, 93000]),
            sbp=rng.randint(130, 180),
            dbp=rng.randint(80, 110),
            stat=rng.choice(["1,000", "2,500", "10,000", "700", "5000"]),
            pct=rng.randint(2, 95),
            pct2=rng.randint(50, 99),
            age=rng.randint(20, 60),
            age2=rng.randint(61, 80),
            year=year,
            year2=year + rng.randint(1, 10),
            month=rng.choice(MONTHS),
            day=rng.randint(1, 28),
            eponym=rng.choice(EPONYMS),
            gene=rng.choice(GENES),
            k=rng.choice(["3.8", "4.2", "4.9"]),
            maxdose=rng.choice([3000, 4000]),
            hr=rng.randint(55, 95),
            ndc=f"{rng.randint(1000, 9999):04d}-{rng.randint(1000, 9999):04d}-{rng.randint(1, 99):02d}",
            cr=rng.choice(["1.4", "2.1", "0.9"]),
        )
        s = s[0].upper() + s[1:]
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ---------------------------------------------------------------- held-out notes

# Hand-written notes in phrasings the generator above does not use, marked <<TYPE|text>>. They were written before
# the detector was run on them and are reported separately (benchmarks/phi_recall.py) as a check on over-fitting.
_HELDOUT = """
Pt is Mrs <<NAME|Gwendolyn Achebe>>, seen with her son <<NAME|Tariq>>.
Next of kin: <<NAME|Imogen Pritchard>>, tel <<PHONE|(503) 555-0172>>.
Cardiology consult requested by Dr <<NAME|Halvorsen>> on <<DATE|2/14/2023>>.
Ms. <<NAME|Oyelowo>> was discharged home <<DATE|Feb 20, 2023>> on apixaban 5 mg bid.
<<NAME|Augustin Ferrand>>, 71 y/o male, hx of CHF and AFib.
The patient's wife, <<NAME|Delphine>>, asked about hospice options.
Contact number for patient's mother <<NAME|Rosalind Achterberg>>: <<PHONE|862.555.0134>>.
Labs faxed to PCP office, fax no. <<FAX|(718) 555-0166>>.
Reached pt on cell <<PHONE|404 555 0187>> to review potassium of 5.9.
Insurance: Aetna, member # <<HEALTH_PLAN|W284619375>>, group 00877.
Medicaid ID: <<HEALTH_PLAN|NY48201937>>.
Self-pay balance on account <<ACCOUNT|778-55102-3>>.
Chart no. <<MRN|556-221-09>>, room 4B.
Encounter number <<MRN|E20230418117>>.
SS# <<SSN|212-67-4401>>
Born <<DATE|12/03/1949>> in Ohio; retired machinist.
Date of admission: <<DATE|04-11-2022>>. Date of discharge: <<DATE|04-17-2022>>.
Last seen in the office <<DATE|September 2021>>.
Expired on the <<DATE|3rd of June 2020>> at 04:12.
Resides at <<ADDRESS|2207 Kessler Blvd>>, Indianapolis, IN <<ZIP|46222>>.
Mailing address <<ADDRESS|PO Box 3381>>, Flagstaff, AZ <<ZIP|86003>>.
New address <<ADDRESS|915 Old Mill Road, Unit 12>>.
Patient shared her Instagram, <<URL|https://instagram.example/gwen.achebe>>.
Images stored at <<URL|http://pacs.example.org/study/88231>>.
Login attempt from <<IP|198.51.100.23>> flagged by security.
Wearable synced via router at <<IP|192.168.1.104>>.
MVC: driver of sedan, VIN <<VEHICLE|2T1BURHE0JC074539>>.
Patient's car, plate <<VEHICLE|8XYZ221>>, remained in lot C.
CGM sensor serial <<DEVICE|G7-4419-82QX>> replaced.
ICD (implanted defibrillator) serial no. <<DEVICE|RTX882104>>.
Email sent to <<EMAIL|imogen.pritchard@example.com>> with instructions.
Reply-to: <<EMAIL|a.ferrand1949@mail.example.net>>
Husband <<NAME|Joaquin Ibarra>> is the health care proxy.
Case discussed with <<NAME|Beatriz Olumide>>, NP.
Signed: <<NAME|Eamon Castellucci>>, DO
Discussed plan with patient <<NAME|Mirela Vasquez-Hohl>> and her partner.
Patient <<NAME|Lindqvist>> tolerated the procedure well.
MRN <<MRN|7730452>>; DOB <<DATE|1955-07-30>>.
Seen <<DATE|3/2/24>> for wound check.
Scheduled for colonoscopy on <<DATE|May 9>>.
Hi <<NAME|Dominika>>, your refill has been sent.
Card on file <<ACCOUNT|5500 0055 5555 5559>>.
Pager <<PHONE|617-555-0158>> for the on-call resident.
Return fax <<FAX|212.555.0193>>.
ZIP <<ZIP|10027>>.
Medicare Beneficiary Identifier <<HEALTH_PLAN|5TX2-QA7-WD41>>.
Mother: <<NAME|Nadia Rahimi>>; father: <<NAME|Karim Rahimi>>.
<<NAME|Ottoline Barraclough>> presented to the ED with syncope.
Lives with daughter <<NAME|Priscilla>> at <<ADDRESS|48 Larkspur Ln>>.
"""


# A second hand-written set: 32 of its 40 identifiers were found on its first run (names 8 of 12, dates 5 of 8);
# the misses led to general fixes (sentence ends after abbreviations, relatives, 'Name, 58,', insurer ID).
_HELDOUT2 = """
Called pt's granddaughter <<NAME|Esperanza Quiroga>> at <<PHONE|(915) 555-0128>>, no answer.
Visit date <<DATE|11/30/2022>>. Provider: <<NAME|Wendell Okonkwo>>, PA-C.
Transferred from St. Mary's on <<DATE|Jan 4, 2021>> after a fall at home.
History obtained from the patient's niece, <<NAME|Marguerite>>.
ID band checked: <<NAME|Hollis Trevelyan>>, MRN <<MRN|30219874>>.
Insurance card: UnitedHealthcare, ID <<HEALTH_PLAN|928374615>>.
Patient's BCBS member ID is <<HEALTH_PLAN|XJK902837465>>.
The bill for acct. <<ACCOUNT|4400918273>> was sent to collections.
Wife reachable on mobile <<PHONE|+1 (312) 555-0199>>.
Pharmacy fax <<FAX|919-555-0142>>; pharmacy phone <<PHONE|919-555-0143>>.
<<NAME|Rufus Abernethy>>, 58, came in with crushing chest pain.
Ms <<NAME|Penhaligon>> prefers afternoon appointments.
Patient <<NAME|Yevgenia Lapointe>> consented to the study.
Social Security: <<SSN|318-42-7765>>
Admitted <<DATE|06/12/2019>>, discharged <<DATE|06/19/2019>>.
Deceased <<DATE|October 14, 2018>>.
Lives alone at <<ADDRESS|3301 Fernhill Avenue>>, Apt 6, Dayton, OH <<ZIP|45406>>.
Send correspondence to <<ADDRESS|71 Cobblestone Court>>.
Uploaded wound photos: <<URL|https://share.example.com/p/ab12cd34>>.
Family set up a fundraiser at <<URL|www.example.org/help-for-hollis>>.
Remote monitoring gateway <<IP|203.0.113.5>> went offline.
Vehicle registration <<VEHICLE|5KTR390>>.
Hit by a truck, VIN <<VEHICLE|1FTFW1ET5DFC10312>>.
Hearing aid serial number <<DEVICE|HA-55821-L>> (left ear).
Spinal cord stimulator, S/N <<DEVICE|NSP3390127>>.
Write to <<EMAIL|rufus.abernethy@example.org>> for records.
Our records show <<NAME|Florentyna Wozniak>> was seen by cardiology.
Per daughter <<NAME|Camille>>, he has been more confused.
<<NAME|Bartholomew Nkemelu>> reports improvement in his knee pain.
DOB: <<DATE|7-4-1958>>
Colonoscopy <<DATE|Aug 2018>> was normal per the patient.
Last menstrual period <<DATE|March 2>>.
Ophthalmology note dictated by <<NAME|Anselm Virtanen>>.
Please contact <<NAME|Theodora Marsh>>, case manager, with questions.
"""


# A third set: 20 of its 28 identifiers were found on its first run (names 5 of 9); the misses led to general
# fixes (in-law relatives, 'Guarantor:', 'policy X', 'MR 45-...', month/year after 'last' or 'S/P').
_HELDOUT3 = """
Addendum: spoke w/ pt's brother-in-law <<NAME|Gustavo Pereira>> re: transport home.
Rx called in to Walgreens; pt's cell is <<PHONE|773-555-0110>>.
Outside records requested via fax (<<FAX|505) 555-0137>>.
S/P CABG at outside hospital <<DATE|10/2019>>, details unavailable.
PT eval: pt lives in 2nd floor walk-up at <<ADDRESS|1189 Greenbriar Ct>>.
Spouse <<NAME|Lorraine>> at bedside, updated on plan of care.
Guarantor: <<NAME|Desmond Achterberg>>; relationship: father.
Medicare ID <<HEALTH_PLAN|7QR4-HF2-MK55>> verified at check-in.
Dr. <<NAME|Anand Subramaniam>> (nephrology) will follow.
Per EMS, pt found down at <<ADDRESS|600 Canal Street>>; GCS 13.
The pt, <<NAME|Henrietta Oduya>>, is a poor historian.
Telemetry box serial <<DEVICE|TLM-0093381>> returned to the unit.
Claim submitted under policy <<HEALTH_PLAN|HPX-44120983>>.
Colectomy <<DATE|3/14/2016>> for diverticulitis.
Mammogram ordered; last one <<DATE|Feb 2021>> was BI-RADS 2.
Reached out to <<NAME|Ingeborg Salazar>> at <<EMAIL|ingeborg.s@example.com>>.
Pt's son <<NAME|Dmitri>> states she fell twice this week.
Arrived by private car, tag <<VEHICLE|JKL 4471>>.
Session from <<IP|198.51.100.201>> timed out.
Pt prefers to be called <<NAME|Bea>>.
Hospice contact: <<NAME|Wren Castellano>>, RN, <<PHONE|(207) 555-0153>>.
Home: <<ADDRESS|47 Birch Hollow Road>>, Bangor, ME <<ZIP|04401>>.
Birth date <<DATE|1971-02-09>>; gravida 3 para 2.
Acct <<ACCOUNT|00918-22734>> referred to financial counseling.
MR <<MRN|45-88-1290>>
"""


# The fourth set, written after the last change to the detector and left as first measured: 21 of 24 found
# (names 6 of 8; a name opening a note with no cue, a hyphenated given name after 'Daughter-in-law', and
# 'member H55231987' missed); of its 20 clean sentences one was flagged ('Dr. Seuss').
_HELDOUT4 = """
ED triage note: <<NAME|Marguerite Fairweather>>, 67F, c/o dizziness since this morning.
Daughter-in-law <<NAME|Soo-ah Park>> brought meds list; her number <<PHONE|(480) 555-0121>>.
Transferred to us from Mercy General <<DATE|12/28/2023>>.
Bills go to <<ADDRESS|PO Box 9921>>, Reno, NV <<ZIP|89507>>.
Pt Mr <<NAME|Ezekiel Montgomery-Ruiz>> is NPO after midnight.
Ins: Humana, member <<HEALTH_PLAN|H55231987>>.
Echo <<DATE|June 2022>> showed EF 35%, per his cardiologist.
Caller identified herself as the patient's sister, <<NAME|Ottilie Brandt>>.
Patient portal username is linked to <<EMAIL|ezekiel.mr@example.net>>.
Attending: Dr. <<NAME|Nnamdi Achike>>
CPAP machine S/N <<DEVICE|RS2-882013>> loaned to patient.
Wound care supplies shipped to <<ADDRESS|5520 Prairie View Drive, Apt 14>>.
DOB <<DATE|Sep 9, 1944>>, MRN# <<MRN|0081234567>>.
Fax records to Dr. <<NAME|Halloran>> at <<FAX|(608) 555-0184>>.
Daughter reports her father, <<NAME|Augusto>>, forgets doses.
EMS unit noted plate <<VEHICLE|4GHT 218>> at the scene.
Car seat VIN not available.
Left voicemail for <<NAME|Bronwyn Tate>> regarding biopsy.
Hospital account <<ACCOUNT|HA-55120934>> closed.
Pt presented <<DATE|4/1/22>> with chest pain.
Telehealth login IP <<IP|192.0.2.180>>.
"""


def heldout(second: bool = False, third: bool = False, fourth: bool = False) -> list[dict]:
    """The hand-written held-out notes as {"text", "spans"}: set 1 (default), 2, 3 or 4 (see the comments above
    each set for how it was used)."""
    out = []
    text = _HELDOUT4 if fourth else _HELDOUT3 if third else _HELDOUT2 if second else _HELDOUT
    for line in text.strip().splitlines():
        b = _Builder()
        pos = 0
        for m in re.finditer(r"<<(\w+)\|(.*?)>>", line):
            b.add(line[pos : m.start()])
            b.add(m.group(2), m.group(1))
            pos = m.end()
        b.add(line[pos:])
        out.append(b.done())
    return out


HELDOUT_CLEAN = """
Adults should take 1000 mg of calcium and 600 IU of vitamin D daily.
HbA1c fell from 9.1% to 7.4% after 3 months on metformin 1000 mg bid.
Troponin I peaked at 2.3 ng/mL 6 hours after onset.
eGFR 42 mL/min/1.73 m2 corresponds to CKD stage 3b (N18.32).
Billing uses CPT 99204 for a new patient visit of 45 to 59 minutes.
Penicillin was discovered in 1928 and mass-produced in the 1940s.
The 2017 ACC/AHA guideline defines hypertension as 130/80 mmHg or higher.
Hodgkin lymphoma has a cure rate above 80% with modern chemotherapy.
Crohn's disease and ulcerative colitis are the two main forms of IBD.
People with Down syndrome have a higher risk of thyroid disease.
Addison's disease requires lifelong hydrocortisone, usually 15 to 25 mg per day.
Graves disease is the most common cause of hyperthyroidism in the United States.
The Epstein-Barr virus causes infectious mononucleosis.
Tommy John surgery reconstructs the ulnar collateral ligament.
Lou Gehrig's disease is another name for ALS.
The Framingham Heart Study began in 1948 in Massachusetts.
About 1 in 3,500 male infants is born with Duchenne muscular dystrophy.
Sodium 138 mmol/L, potassium 4.1 mmol/L, chloride 101 mmol/L.
The ratio of 1:10,000 epinephrine is used in cardiac arrest.
Measles cases in 2019 were the highest reported since 1992.
Influenza season usually peaks between December and February.
The clinic is open from 9:00 to 17:30 on weekdays.
Give ondansetron 4 mg IV every 8 hours as needed for nausea.
An INR of 2.5 is the target for most patients on warfarin.
Serum ferritin of 12 ng/mL suggests iron deficiency.
Mutations in the CFTR gene on chromosome 7 cause cystic fibrosis.
Screening for colorectal cancer should start at age 45.
In March 2020 many elective procedures were postponed worldwide.
The FDA approved the first CAR-T therapy on August 30, 2017.
Wilson disease causes copper to build up in the liver and brain.
Bell's palsy usually improves within 3 to 6 months.
Kawasaki disease is most common in children under 5 years.
Fever above 38.3 C in a neutropenic patient is an emergency.
A BMI of 30 kg/m2 or more is classified as obesity.
Take 2 tablets (325 mg each) every 4 to 6 hours, up to 12 tablets in 24 hours.
Room 4B is on the fourth floor of the west wing.
Version 10 of ICD replaced ICD-9 in the United States in October 2015.
The Johns Hopkins Hospital was founded in 1889.
The Apgar score is checked at 1 and 5 minutes after birth.
Huntington disease is inherited in an autosomal dominant pattern.
"""
HELDOUT4_CLEAN = """
Start with 0.5 mg twice daily and titrate to 2 mg twice daily over 2 weeks.
Dr. Seuss books are often used in pediatric waiting rooms.
Babinski sign is abnormal after 2 years of age.
The Heimlich maneuver can clear a blocked airway.
Kaplan-Meier curves showed better survival at 5 years.
In the Women's Health Initiative, hormone therapy raised stroke risk.
Send specimens to the lab in a sterile container before 3 pm.
The normal range for platelets is 150,000 to 450,000 per microliter.
Apgar scores of 7 to 10 are reassuring.
Daughter cells receive one copy of each chromosome.
His bundle pacing is an alternative to right ventricular pacing.
Mother-to-child transmission of HIV is below 1% with treatment.
The Mediterranean diet lowers cardiovascular events by about 30%.
After 6 weeks, most fractures of the wrist have healed.
Guidelines from May 2023 added a new first-line option.
Ambulance crews carry naloxone in most states.
Store insulin pens at room temperature for up to 28 days once opened.
Ask about travel to West Africa in the last 21 days.
Patients over 65 should get the pneumococcal vaccine.
The Heart Outcomes Prevention Evaluation trial tested ramipril.
"""
HELDOUT2_CLEAN = """
Start levothyroxine at 1.6 mcg/kg/day and recheck TSH in 6 to 8 weeks.
A fasting glucose of 126 mg/dL or more on two occasions indicates diabetes.
Cushing disease is caused by a pituitary adenoma that makes ACTH.
The Whipple procedure removes the head of the pancreas.
Graves ophthalmopathy may worsen after radioactive iodine.
Paget disease of the breast is a rare form of breast cancer.
Gram-positive cocci in clusters suggest Staphylococcus aureus.
Taking 81 mg of aspirin daily lowers the risk of a second heart attack.
A QTc above 500 ms increases the risk of torsades de pointes.
The Centor criteria help decide who needs a throat culture.
In 2010, the Affordable Care Act expanded coverage to young adults.
Most cases occur between November and March.
The Salk vaccine was licensed in April 1955.
About 5.8 million people in the US live with Alzheimer's disease.
Type 1 diabetes is usually diagnosed before age 30.
A1C goals are less strict for older adults, often below 8.0%.
Mix 1 part bleach with 9 parts water to disinfect surfaces.
Ask your doctor before taking St. John's wort with other medicines.
Tetanus boosters are recommended every 10 years.
Lyme disease is spread by the bite of infected blacklegged ticks.
Use 0.5 mL for children 6 to 35 months old.
Hemoglobin below 7 g/dL is a common threshold for transfusion.
Hashimoto thyroiditis is the leading cause of hypothyroidism.
Sjogren syndrome often occurs with rheumatoid arthritis or lupus.
Meckel diverticulum follows the rule of 2s.
"""
