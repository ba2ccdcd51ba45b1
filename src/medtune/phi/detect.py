"""PHI detection: candidate finders for dates, phones, labelled values, places and network ids, the resolution of
overlapping candidates, and the public scan / redact functions."""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import asdict, dataclass

from medtune.phi.names import name_candidates
from medtune.phi.patterns import (
    ACCOUNT,
    CARD,
    DATE_BLOCK,
    DATE_CUE,
    DATE_PATTERNS,
    DATE_PERSONAL_CUE,
    DATE_WEAK_CUE,
    DEVICE,
    DIGIT,
    EMAIL,
    FAX_CUE,
    HEALTH_PLAN,
    IBAN,
    IPV4,
    IPV6,
    MBI,
    MRN,
    PERSON_MENTION,
    PHONE_CUE,
    PHONE_LOOSE,
    PHONE_PATTERNS,
    PLAN_ID,
    PLATE,
    PO_BOX,
    POLICY,
    SSN,
    SSN_LABELED,
    STREET,
    TOLL_FREE,
    UDI,
    URL,
    VIN,
    VIN_LABELED,
    VOICE_CUE,
    WORD,
    ZIP4,
    ZIP_LABELED,
    ZIP_STATE,
    iban_ok,
    luhn_ok,
    public_host,
    vin_ok,
    word_set,
)

TYPES = (
    "NAME",
    "PHONE",
    "FAX",
    "EMAIL",
    "SSN",
    "MRN",
    "HEALTH_PLAN",
    "ACCOUNT",
    "DATE",
    "ADDRESS",
    "ZIP",
    "URL",
    "IP",
    "VEHICLE",
    "DEVICE",
)
FIELDS = ("instruction", "input", "output")  # the text fields of a record (medtune.data reads them from here)


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


# Priorities: when two candidates overlap, the lower number wins (then the longer span).
_PRIORITY = {
    "EMAIL": 0,
    "URL": 1,
    "SSN": 2,
    "MRN": 2,
    "HEALTH_PLAN": 2,
    "ACCOUNT": 2,
    "DEVICE": 2,
    "VEHICLE": 2,
    "IP": 3,
    "FAX": 4,
    "PHONE": 4,
    "DATE": 5,
    "ADDRESS": 6,
    "ZIP": 6,
    "NAME": 7,
}


# ---------------------------------------------------------------- rules

_SENTENCE_END = re.compile(r"[.?!;]\s+(?=[A-Z])|\n")
_ABBREVIATIONS = frozenset(
    "St Dr Mr Mrs Ms Mx Prof No Nos Vol Fig Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec "
    "vs Inc Ltd Co Jr Sr Ave Rd Blvd Apt Dept approx Pt pt".split()
)


def _is_sentence_end(text: str, m: re.Match) -> bool:
    if text[m.start()] != ".":
        return True
    word = re.search(r"(\w+)$", text[max(0, m.start() - 12) : m.start()])
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


_MONTH_WORDS = word_set(
    "jan january feb february mar march apr april may jun june jul july aug august sep sept "
    "september oct october nov november dec december"
)


def _date_candidates(text: str, out: list, words: frozenset | set) -> None:
    seen: list[tuple[int, int]] = []
    has_month = bool(words & _MONTH_WORDS)
    for kind, pattern in DATE_PATTERNS:
        if not has_month and kind not in ("num", "num2", "nmy"):
            continue
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(a <= s < b or a < e <= b for a, b in seen):  # a longer form (with the year) already took it
                continue
            s0, e0 = _sentence_bounds(text, s)
            before = text[max(s0, s - 70) : s]
            sentence = text[s0:e0]
            general = bool(DATE_BLOCK.search(sentence))
            if DATE_CUE.search(before) or re.search(r"(?i:\b(?:DOB|date|D\.O\.B\.?)\s*[:\-]\s*$)", before):
                tied = True
            elif general:
                tied = False
            elif kind in ("day", "num"):
                tied = kind == "num" or bool(PERSON_MENTION.search(sentence) or DATE_WEAK_CUE.search(before))
            else:  # month and day, or month and year: only with a cue and a person in view
                weak = bool(DATE_WEAK_CUE.search(before)) and bool(PERSON_MENTION.search(sentence))
                tied = weak or bool(DATE_PERSONAL_CUE.search(before))
            if tied:
                seen.append((s, e))
                out.append(("DATE", s, e))


_PHONE_WORDS = word_set(
    "phone ph tel telephone cell cellphone mobile mob pager beeper call text contact reached "
    "number home work whatsapp fax facsimile"
)


def _phone_candidates(text: str, out: list, words: frozenset | set) -> None:
    found = []
    for p in PHONE_PATTERNS:
        for m in p.finditer(text):
            if m.groupdict().get("a") in TOLL_FREE:
                continue
            if "cc" in m.groupdict() and m.group("cc") is not None:
                digits = sum(c.isdigit() for c in m.group())
                if not 8 <= digits <= 15:
                    continue
            found.append(m.span())
    for cue in PHONE_CUE.finditer(text) if words & _PHONE_WORDS else ():  # looser formats right after a cue
        window_end = min(len(text), cue.end() + 40)
        loose = PHONE_LOOSE.search(text, cue.end(), window_end)
        if (
            loose
            and not re.search(r"[A-Za-z]{3,}", text[cue.end() : loose.start()])
            and loose.group("a") not in TOLL_FREE
        ):
            found.append(loose.span())
    for s, e in found:
        before = text[max(0, _sentence_bounds(text, s)[0], s - 60) : s]
        after = text[e : e + 12]
        fax = FAX_CUE.search(before)
        voice = list(VOICE_CUE.finditer(before))
        is_fax = (fax and (not voice or voice[-1].start() < fax.start())) or re.match(r"\s*\(?(?i:fax)\b", after)
        out.append(("FAX" if is_fax else "PHONE", s, e))


# (type, labelled pattern, fewest digits in the value, words one of which the label needs)
_LABELED_RULES = (
    ("MRN", MRN, 4, word_set("mrn mr medical med chart hospital patient pt unit encounter visit accession")),
    (
        "HEALTH_PLAN",
        HEALTH_PLAN,
        4,
        word_set(
            "member membership subscriber policy insurance health beneficiary medicaid medicare mbi hicn group plan bin"
        ),
    ),
    (
        "HEALTH_PLAN",
        PLAN_ID,
        5,
        word_set(
            "insurance insurer health coverage medicaid medicare bcbs blue aetna cigna "
            "humana unitedhealthcare united kaiser anthem tricare"
        ),
    ),
    ("HEALTH_PLAN", POLICY, 6, word_set("policy")),
    ("ACCOUNT", ACCOUNT, 4, word_set("account acct billing invoice bank iban card credit debit routing guarantor")),
    ("DEVICE", DEVICE, 3, word_set("serial s sn device udi implant pump model")),
)


def _value_candidates(text: str, out: list, words: frozenset | set) -> None:
    for kind, pattern, min_digits, keywords in _LABELED_RULES:
        if not words & keywords:
            continue
        for m in pattern.finditer(text):
            v = m.group("v").rstrip()
            if sum(c.isdigit() for c in v) >= min_digits:
                out.append((kind, m.start("v"), m.start("v") + len(v)))
    for m in SSN.finditer(text):
        out.append(("SSN", *m.span()))
    if words & {"ssn", "social", "ss"}:
        for m in SSN_LABELED.finditer(text):
            out.append(("SSN", *m.span("v")))
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 2:
            out.append(("ACCOUNT", *m.span()))
    for m in IBAN.finditer(text):
        if iban_ok(m.group()):
            out.append(("ACCOUNT", *m.span()))
    for m in MBI.finditer(text):
        out.append(("HEALTH_PLAN", *m.span()))
    for m in UDI.finditer(text):
        out.append(("DEVICE", *m.span()))
    if words & {"vin", "vehicle"}:
        for m in VIN_LABELED.finditer(text):
            out.append(("VEHICLE", *m.span("v")))
    for m in VIN.finditer(text):
        if vin_ok(m.group()):
            out.append(("VEHICLE", *m.span()))
    if words & {"license", "licence", "plate", "tag", "registration"}:
        for m in PLATE.finditer(text):
            v = m.group("v").rstrip(" -")
            if 2 <= len(v.replace(" ", "").replace("-", "")) <= 8:
                out.append(("VEHICLE", m.start("v"), m.start("v") + len(v)))


_STREET_WORDS = word_set(
    "street st avenue ave road rd boulevard blvd lane ln drive dr court ct place pl terrace ter "
    "way circle cir parkway pkwy highway hwy square sq trail trl plaza alley crescent loop pike"
)


def _place_candidates(text: str, out: list, words: frozenset | set) -> None:
    if words & _STREET_WORDS:
        for m in STREET.finditer(text):
            out.append(("ADDRESS", *m.span()))
    if "box" in words:
        for m in PO_BOX.finditer(text):
            out.append(("ADDRESS", *m.span()))
    for m in ZIP_STATE.finditer(text):
        out.append(("ZIP", *m.span("v")))
    if words & {"zip", "postal", "postcode"}:
        for m in ZIP_LABELED.finditer(text):
            out.append(("ZIP", *m.span("v")))
    for m in ZIP4.finditer(text):
        out.append(("ZIP", *m.span()))


def _net_candidates(text: str, out: list) -> None:
    for m in EMAIL.finditer(text):
        out.append(("EMAIL", *m.span()))
    for m in URL.finditer(text):
        s, e = m.span()
        while e > s and text[e - 1] in ".,;:!?)":
            e -= 1
        url = text[s:e]
        host = re.sub(r"^(?i:[a-z]+://)", "", url).split("/")[0].split("?")[0].split(":")[0].lower()
        if "@" in url or public_host(host):
            continue
        out.append(("URL", s, e))
    for pattern in (IPV4, IPV6):
        for m in pattern.finditer(text):
            if pattern is IPV6 and not re.search(r"[A-Fa-f]|::", m.group()):
                continue  # times such as 10:30:15 are not addresses
            out.append(("IP", *m.span()))


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
    has_digit = DIGIT.search(text) is not None
    words = set(WORD.findall(text.lower()))
    if has_digit or "@" in text or "www" in text or "/" in text:
        _net_candidates(text, cands)
    if has_digit:
        _phone_candidates(text, cands, words)
        _value_candidates(text, cands, words)
        _place_candidates(text, cands, words)
        _date_candidates(text, cands, words)
    name_candidates(text, cands, words)
    return _resolve(cands)


def scan_records(records: list[dict], fields=FIELDS) -> list[Finding]:
    """Findings in the given fields of every record (rows numbered from 1); non-string values are skipped."""
    findings: list[Finding] = []
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
