"""PHI names: the first-name list (ours), the words that are not names (stop words, eponym words), the name
patterns (titles, labels, relatives, credentials, ages, cue verbs) and the NAME candidate finder."""

from __future__ import annotations

import functools
import re

from medtune.phi.patterns import DIGIT

# ---------------------------------------------------------------- word lists (ours)

# Common given names from many origins. Names that are also ordinary words, months, places or eponyms of
# diseases (Addison, Gilbert, Hunter, Will, May, Grace, Gene, Iris, Virginia...) are left out on purpose.
FIRST_NAMES = frozenset(
    """
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
""".split()
)

# Titles that introduce a person's name.
_TITLES = r"(?:Mrs|Mr|Ms|Mx|Miss|Dr|Prof|Mister|Madam)"
# Credentials written after a clinician's name.
_CREDENTIALS = (
    r"(?:M\.D\.|MD|D\.O\.|DO|R\.N\.|RN|NP|FNP-BC|FNP|PA-C|Ph\.D\.|PhD|MBBS|DDS|DMD|PharmD|LPN|CNM|CRNA|"
    r"LCSW|MSW|DPM|APRN|BSN|MSN)"
)

# Capitalised words that start or end a candidate name but are not names: function words, clinical words,
# institutions, weekdays and months.
_STOP = frozenset(
    """
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
""".split()
)

# Words after a capitalised pair that make it an eponym (a disease, a sign, a test...), not a person's name.
_EPONYM_NEXT = frozenset(
    """
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
""".split()
)


# ---------------------------------------------------------------- name patterns

_SP = r"[ \t]+"  # names never run over a line break
_NAME_WORD = r"(?:(?:O['’]|Mc|Mac|D['’])?[A-Z][a-z]+(?:[-'’][A-Z][a-z]+)?)"
_PARTICLES = (
    "van",
    "von",
    "der",
    "den",
    "de",
    "del",
    "della",
    "da",
    "di",
    "du",
    "la",
    "le",
    "bin",
    "ibn",
    "al",
    "el",
    "ben",
)
_PARTICLE = r"(?:" + "|".join(_PARTICLES) + r")"
_NAME_TAIL = r"(?:" + _SP + r"(?:[A-Z]\.|" + _NAME_WORD + r"|(?:" + _PARTICLE + _SP + r"){1,2}" + _NAME_WORD + r"))"
_NAME_SEQ = r"(?:" + _NAME_WORD + _NAME_TAIL + r"{0,3})"
_NAME_SEQ2 = r"(?:" + _NAME_WORD + _NAME_TAIL + r"{1,2})"  # two or three words
_CAPS_WORD = r"(?:[A-Z]{2,}(?:[-'][A-Z]{2,})?)"
_LAST_FIRST = r"(?:" + _NAME_WORD + r",[ \t]*" + _NAME_WORD + r"(?:" + _SP + r"[A-Z]\.)?)"
_CAPS_SEQ = r"(?:" + _CAPS_WORD + r"(?:,?" + _SP + r"(?:[A-Z]\.|" + _CAPS_WORD + r")){0,3})"
_LINE_START = r"(?:^|(?<=\n)|(?<=[.!?;|][ \t])|(?<=[.!?;|][ \t]{2}))"

_NAME_TITLE = re.compile(r"\b" + _TITLES + r"\.?" + _SP + r"(?P<v>" + _NAME_SEQ + r")")
_RELATIVE = (
    r"(?:wife|husband|son|daughter|mother|father|sister|brother|partner|spouse|friend|neighbou?r|caregiver|"
    r"guardian|grandson|granddaughter|grandmother|grandfather|niece|nephew|aunt|uncle|cousin|fianc[ée]e?|"
    r"roommate|boyfriend|girlfriend|stepson|stepdaughter|stepmother|stepfather|proxy|"
    r"health\s+care\s+proxy)(?:-in-law)?"
)
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
    r"(?P<v>" + _LAST_FIRST + r"|" + _NAME_SEQ + r"|" + _CAPS_SEQ + r")(?![ \t]+[a-z])"
)
# A relative's word right before a capitalised word is a strong cue: 'her son Tariq', 'Husband Joaquin Ibarra'
# (after a possessive, or opening a sentence; 'the mother Diabetes' in a run-on list is not).
_NAME_RELATIVE = re.compile(
    r"(?:(?i:\b(?:his|her|their|the\s+patient['’]s|patient['’]s|pt['’]s|my|your|with|per|by|to|"
    r"from)\s+"
    + _RELATIVE
    + r"|\b(?:son|daughter|wife|husband|child|mother|father)\s+of)|"
    + _LINE_START
    + r"(?:Wife|Husband|Son|Daughter|Mother|Father|Sister|Brother|Partner|"
    r"Spouse|Guardian|Caregiver))"
    r"[ \t]*[,:]?" + _SP + r"(?:" + _TITLES + r"\.?" + _SP + r")?(?P<v>" + _NAME_SEQ + r")"
)
# 'patient Lindqvist tolerated...': one capitalised word between 'patient' and what a person does.
_DOES = (
    r"(?:is|was|has|had|reports|reported|denies|denied|states|stated|tolerated|underwent|presented|presents|"
    r"complains|complained|returned|arrived|agreed|agrees|declined|refused|remains|remained|will|would|"
    r"did|does|verbalized|understands|lives|lived)"
)
_NAME_PATIENT = re.compile(r"(?i:\b(?:patient|pt\.?))" + _SP + r"(?P<v>" + _NAME_WORD + r")(?=" + _SP + _DOES + r"\b)")
_NAME_CUE = re.compile(
    r"(?i:\b(?:patient|pt\.?|client|accompanied\s+by|brought\s+in\s+by|referred\s+by|seen\s+by|examined\s+by|"
    r"signed\s+by|dictated\s+by|cared\s+for\s+by|spoke\s+(?:with|to|w/)|talked\s+(?:with|to)|named|called|"
    r"reached\s+out\s+to|contacted|met\s+with|discussed\s+with|left\s+(?:a\s+)?(?:message|voicemail)\s+(?:for|with)))"
    r",?" + _SP + r"(?P<v>" + _NAME_SEQ + r")"
)
# 'prefers to be called Bea', 'goes by Bea': a strong cue, one word is enough.
_NAME_CALLED = re.compile(
    r"(?i:\b(?:prefers\s+to\s+be\s+called|likes\s+to\s+be\s+called|goes\s+by|"
    r"nickname\s+is))" + _SP + r"(?P<v>" + _NAME_SEQ + r")"
)
_NAME_GREETING = re.compile(
    _LINE_START
    + r"(?:Dear|Hi|Hello|Good\s+(?:morning|afternoon))"
    + _SP
    + r"(?:"
    + _TITLES
    + r"\.?"
    + _SP
    + r")?(?P<v>"
    + _NAME_SEQ
    + r")[ \t]*[,:!\n]"
)
_NAME_VERB = re.compile(
    r"(?P<v>" + _NAME_SEQ2 + r")(?=" + _SP + r"(?:reports|reported|states|stated|denies|"
    r"denied|complains|complained|presents|presented|was\s+(?:admitted|seen|discharged|"
    r"transferred|brought\s+in)|is\s+(?:a|an)\s+\d)\b)"
)
_SINGLE_VERB = re.compile(
    _LINE_START + r"(?P<v>[A-Z][a-z]{2,})(?=" + _SP + r"(?:reports|denies|complains|"
    r"states\s+(?:that\s+)?(?:she|he|they)|was\s+admitted|is\s+(?:a|an)\s+\d{1,3}[- ]year)\b)"
)
_NAME_CRED = re.compile(
    r"(?P<v>"
    + _NAME_WORD
    + r"(?:"
    + _SP
    + r"(?:[A-Z]\.|"
    + _NAME_WORD
    + r")){1,3}),?"
    + _SP
    + _CREDENTIALS
    + r"(?![\w])"
)
_NAME_AGE = re.compile(
    r"(?P<v>" + _NAME_SEQ + r")(?:,\s*(?:a|an)\s+\d{1,3}[- ](?:year|yr|month|week)s?[- ]old|\s+(?:is|was)\s+(?:a|an)\s+"
    r"\d{1,3}[- ](?:year|yr|month)s?[- ]old|\s*\((?:age\s*)?\d{1,3}\s*(?:y/?o|years?|yrs?)?\)|,\s*(?:age|aged)\s+"
    r"\d{1,3}\b|,\s*\d{1,3}\s*(?:y/?o|yo)\b|,\s*\d{1,3},\s+[a-z]|[ \t]*[,;(][ \t]*(?:DOB|D\.O\.B|MRN|MR#|born)\b)"
)
_FIRST_PAIR = re.compile(
    r"\b(?P<v>(?P<f>[A-Z][a-z]+)(?:"
    + _SP
    + r"[A-Z]\.)?(?:"
    + _SP
    + r"(?:"
    + _PARTICLE
    + _SP
    + r"){0,2}"
    + _NAME_WORD
    + r"){1,2})"
)
_FIRST_ALONE = re.compile(
    r"\b(?P<v>[A-Z][a-z]+)(?=" + _SP + r"(?:reports|reported|states|stated|denies|denied|"
    r"complains|complained|presents|presented|notes|noted|says|said|asked|returned|arrived|"
    r"agrees|agreed|verbalized|tolerated|underwent|takes|took|lives|was\s+(?:admitted|seen|"
    r"discharged|born|brought|transferred|diagnosed|started)|is\s+(?:a|an)\s+\d|"
    r"has\s+(?:been|had|a\s+history))\b)"
)


_LABEL_MARK = re.compile(r"[:\-–]")
_LABEL_WORDS = frozenset(
    "name patient pt contact kin nok attending pcp physician provider doctor signed signature "
    "guarantor responsible subscriber insured policyholder policy poa attorney interpreter "
    "witness informant hcp "
    "dictated reviewed seen examined prepared author client resident guardian surgeon nurse "
    "caregiver cc from to wife husband son daughter mother father sister brother partner spouse "
    "friend neighbor neighbour grandson granddaughter grandmother grandfather niece nephew aunt "
    "uncle cousin fiance fiancee roommate boyfriend girlfriend stepson stepdaughter stepmother "
    "stepfather proxy".split()
)
_RELATIVE_WORDS = _LABEL_WORDS - {
    "name",
    "patient",
    "pt",
    "contact",
    "kin",
    "nok",
    "attending",
    "pcp",
    "physician",
    "provider",
    "doctor",
    "signed",
    "signature",
    "dictated",
    "reviewed",
    "seen",
    "examined",
    "prepared",
    "author",
    "client",
    "resident",
    "surgeon",
    "nurse",
    "cc",
    "from",
    "to",
}
_CREDENTIAL_WORDS = frozenset(
    "md m d o r n do rn np fnp pa ph phd mbbs dds dmd pharmd lpn cnm crna lcsw msw dpm aprn bsn msn".split()
)
_CUE_WORDS = frozenset(
    "patient pt client accompanied brought referred seen examined signed dictated cared spoke "
    "talked named called reached contacted met discussed left".split()
)
_GREETING_WORDS = frozenset("dear hi hello good".split())
_VERB_WORDS = frozenset(
    "reports reported states stated denies denied complains complained presents presented was is".split()
)


# ---------------------------------------------------------------- name candidates


def _is_eponym(text: str, s: int, e: int) -> bool:
    """True when the capitalised words at [s, e) belong to an eponym or a compound ('Parkinson disease',
    'Charcot-Marie-Tooth', "Lou Gehrig's disease", 'Marcus Gunn pupil')."""
    if s > 0 and text[s - 1] in "-–/":
        return True
    rest = text[e : e + 40]
    if re.match(r"[-–]\w", rest):
        return True
    m = re.match(r"(?:['’]s?)?\s+(?:[A-Z][a-z]+\s+)?([A-Za-z]+)", rest)
    return bool(m and m.group(1).lower() in _EPONYM_NEXT)


_WORDY_SUFFIX = re.compile(
    r"(?:ed|ing|ness|tion|sion|ment|ity|ure|ous|ive|ful|less|ism|ance|ence|ic|ly|ary|ory|"
    r"ies|ogy|emia|itis|osis|oma)$"
)


def _in_proper_noun(text: str, s: int) -> bool:
    """True when the candidate continues a longer capitalised phrase: 'Health and Clinical Excellence'."""
    m = re.search(r"([A-Z][A-Za-z]*)[ \t]+(?:(?:and|of|for|the|&)[ \t]+)?$", text[max(0, s - 40) : s])
    return m is not None and m.group(1) not in _STOP and not re.fullmatch(_TITLES, m.group(1))


def _trim_name(text: str, s: int, e: int) -> tuple[int, int] | None:
    """Drop stop words at the ends of a candidate name and a possessive 's; None if nothing is left."""
    words = [(m.start() + s, m.end() + s) for m in re.finditer(r"\S+", text[s:e])]
    while words and text[words[0][0] : words[0][1]].strip(",.").title() in _STOP:
        words.pop(0)
    while words and text[words[-1][0] : words[-1][1]].strip(",.").title() in _STOP | {p.title() for p in _PARTICLES}:
        words.pop()
    if not words:
        return None
    s, e = words[0][0], words[-1][1]
    while e > s and text[e - 1] in ",.":
        e -= 1
    if text[e - 2 : e] in ("'s", "’s"):
        e -= 2
    return (s, e) if e > s + 1 else None


def _add_name(text: str, out: list, s: int, e: int, strong: bool, titled: bool = False) -> None:
    """Add the candidate name at [s, e) once trimmed; a weak cue (strong=False) needs more evidence."""
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


def name_candidates(text: str, out: list, words: frozenset | set) -> None:
    add = functools.partial(_add_name, text, out)

    # Each rule runs only when the words it needs are in the text (a set look-up is much cheaper than a
    # case-insensitive alternation tried at every position).
    has_digit = DIGIT.search(text) is not None
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
