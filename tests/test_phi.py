"""The PHI detector (medtune.phi) on a seeded synthetic set: recall by type on planted identifiers, false positives
on clean medical sentences, redaction, and findings that never carry the matched text."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medtune import phi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phi_synthetic as syn  # noqa: E402

STRUCTURED = [t for t in phi.TYPES if t != "NAME"]


@pytest.fixture(scope="module")
def planted():
    return syn.planted()


@pytest.fixture(scope="module")
def clean():
    return syn.clean()


def _overlaps(a, b):
    return a[1] < b[2] and b[1] < a[2]


def _recall(notes):
    hit, total = Counter(), Counter()
    for note in notes:
        found = phi.scan_text(note["text"])
        for kind, s, e in note["spans"]:
            total[kind] += 1
            hit[kind] += any(f[0] == kind and _overlaps(f, (kind, s, e)) for f in found)
    return hit, total


def test_the_synthetic_set_covers_every_type(planted, clean):
    total = Counter(kind for note in planted for kind, _, _ in note["spans"])
    assert set(total) == set(phi.TYPES) == set(syn.TYPES)
    assert sum(total.values()) >= 300 and total["NAME"] >= 40
    assert all(n >= 20 for n in total.values()), total
    assert len(clean) >= 150
    assert syn.planted() == planted and syn.clean() == clean  # seeded: the same set every time


def test_recall_by_type(planted):
    hit, total = _recall(planted)
    recall = {k: hit[k] / total[k] for k in total}
    assert all(recall[k] >= 0.95 for k in STRUCTURED), recall
    assert recall["NAME"] >= 0.80, recall


def test_recall_on_hand_written_notes():
    for which in ({}, {"second": True}, {"third": True}):  # sets whose misses led to fixes
        hit, total = _recall(syn.heldout(**which))
        assert sum(hit.values()) / sum(total.values()) >= 0.9, (which, hit, total)
        assert hit["NAME"] / total["NAME"] >= 0.8, (which, hit, total)
    hit, total = _recall(syn.heldout(fourth=True))  # never tuned on: measured 21 of 24
    assert sum(hit.values()) / sum(total.values()) >= 0.85, (hit, total)


def test_precision_on_planted_notes(planted):
    extra = 0
    found_total = 0
    for note in planted:
        for f in phi.scan_text(note["text"]):
            found_total += 1
            extra += not any(f[0] == k and _overlaps(f, (k, s, e)) for k, s, e in note["spans"])
    assert extra <= 0.02 * found_total, extra


def test_false_positives_on_clean_sentences(clean):
    sentences = syn.all_clean()
    assert sentences[: len(clean)] == clean
    flagged = {s: [(t, s[a:b]) for t, a, b in phi.scan_text(s)] for s in sentences}
    flagged = {s: f for s, f in flagged.items() if f}
    assert len(flagged) <= 0.02 * len(sentences), flagged  # measured: 1 of 285 ('Dr. Seuss')


@pytest.mark.parametrize(
    "text",
    [
        "Take 500 mg twice daily for 10 days.",
        "HbA1c 7.2% and LDL 130 mg/dL at the last check.",
        "ICD-10 codes E11.9 and I10; CPT 99213.",
        "The drug was approved by the FDA in 1998.",
        "In 2019 guidelines, the target was lowered.",
        "On March 11, 2020, the WHO declared a pandemic.",
        "Parkinson disease, Hodgkin lymphoma, Down syndrome and Crohn's disease are named after people.",
        "Lou Gehrig's disease, Marcus Gunn pupil, Charcot-Marie-Tooth disease, Pierre Robin sequence.",
        "The condition affects 1 in 1,000 births and 1 in 2,500 adults.",
        "Blood pressure 140/90 mmHg, pulse 88, temperature 38.5 C at 10:30.",
        "NDC 0002-8215-01; dilute 1:10,000.",
        "Call the hotline at 1-800-222-1222 for poison advice.",
        "Mutations in BRCA1, TP53 and HLA-B27 raise the risk.",
        "See https://www.cdc.gov/flu for the schedule.",
    ],
)
def test_medical_text_is_not_flagged(text):
    assert phi.scan_text(text) == [], [(t, text[a:b]) for t, a, b in phi.scan_text(text)]


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("Call (617) 555-0143 after 5 pm.", "PHONE", "(617) 555-0143"),
        ("Phone 617.555.0143", "PHONE", "617.555.0143"),
        ("Reach her at +1 617 555 0143.", "PHONE", "+1 617 555 0143"),
        ("Fax: 617-555-0199", "FAX", "617-555-0199"),
        ("SSN 123-45-6789 on file.", "SSN", "123-45-6789"),
        ("MRN: 00123456", "MRN", "00123456"),
        ("medical record number 4455667", "MRN", "4455667"),
        ("Member ID: XGH123456789", "HEALTH_PLAN", "XGH123456789"),
        ("Account number 0012345678 is overdue.", "ACCOUNT", "0012345678"),
        ("DOB 03/14/1962", "DATE", "03/14/1962"),
        ("She was admitted on March 3, 2021 with sepsis.", "DATE", "March 3, 2021"),
        ("Lives at 12 Oak Street, Apt 4B with her son.", "ADDRESS", "12 Oak Street, Apt 4B"),
        ("Boston, MA 02118", "ZIP", "02118"),
        ("Write to jane.doe@example.com today.", "EMAIL", "jane.doe@example.com"),
        ("Photos at https://photos.example.com/u/jdoe", "URL", "https://photos.example.com/u/jdoe"),
        ("Login from 203.0.113.7 was blocked.", "IP", "203.0.113.7"),
        ("VIN 1HGCM82633A004352 on the claim.", "VEHICLE", "1HGCM82633A004352"),
        ("License plate 7ABC123 seen by EMS.", "VEHICLE", "7ABC123"),
        ("Pacemaker serial number PJN123456.", "DEVICE", "PJN123456"),
        ("Mr. Okafor was seen today.", "NAME", "Okafor"),
        ("Patient: Maria Lopez", "NAME", "Maria Lopez"),
        ("Accompanied by his daughter, Aisha Haddad.", "NAME", "Aisha Haddad"),
        ("Electronically signed by James Whitfield, MD", "NAME", "James Whitfield"),
    ],
)
def test_formats_are_found(text, kind, value):
    found = [(t, text[a:b]) for t, a, b in phi.scan_text(text)]
    assert (kind, value) in found, found


def test_check_digits():
    assert phi.luhn_ok("4111111111111111") and not phi.luhn_ok("4111111111111112")
    assert phi.vin_ok("1HGCM82633A004352") and not phi.vin_ok("1HGCM82634A004352")
    assert phi.iban_ok("DE89 3704 0044 0532 0130 00") and not phi.iban_ok("DE88 3704 0044 0532 0130 00")
    # a 16-digit number that fails Luhn is not taken for a card
    assert phi.scan_text("Batch 4111 1111 1111 1112 shipped.") == []


def test_redaction_leaves_no_planted_identifier(planted):
    records = [{"instruction": "Summarize the note.", "input": "", "output": note["text"]} for note in planted]
    redacted, counts = phi.redact_records(records)
    assert len(redacted) == len(records) and records[0]["output"] == planted[0]["text"]  # the input is not changed
    missed = []
    for note, r in zip(planted, redacted):
        for kind, s, e in note["spans"]:
            value = note["text"][s:e]
            if value in r["output"]:
                missed.append((kind, value))
    total = sum(len(n["spans"]) for n in planted)
    assert len(missed) <= 0.02 * total, missed
    assert all(f"[{t}]" in "".join(r["output"] for r in redacted) for t in phi.TYPES)
    assert set(counts) <= set(phi.TYPES) and sum(counts.values()) >= 0.95 * total
    # redact_text replaces exactly the spans scan_text finds
    text = "Mrs. Jane Doe, DOB 03/14/1962, phone (617) 555-0143."
    new, c = phi.redact_text(text)
    assert new == "Mrs. [NAME], DOB [DATE], phone [PHONE]." and c == {"NAME": 1, "DATE": 1, "PHONE": 1}


def test_findings_carry_no_text(planted):
    records = [{"instruction": "Summarize.", "input": note["text"], "output": "ok"} for note in planted[:40]]
    records.append({"instruction": "x", "input": None, "output": 7})  # non-strings are skipped
    findings = phi.scan_records(records)
    assert findings and all(f.field == "input" and 1 <= f.row <= 40 for f in findings)
    assert [x.name for x in dataclasses.fields(phi.Finding)] == ["row", "field", "type", "start", "end"]
    dumped = json.dumps([f.to_dict() for f in findings])
    for note in planted[:40]:
        for _kind, s, e in note["spans"]:
            assert note["text"][s:e] not in dumped
    first = findings[0]
    assert planted[first.row - 1]["text"][first.start : first.end]  # row numbers count from 1
    assert phi.count_by_type(findings) == dict(Counter(f.type for f in findings))


def test_empty_and_odd_input():
    assert phi.scan_text("") == [] and phi.scan_text(None) == []
    assert phi.redact_text("nothing here") == ("nothing here", {})
    assert phi.scan_records([{"instruction": "", "input": "", "output": ""}]) == []


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4.5.6.7.8.9." * 3000,
        "a" * 50000,
        "abcdef0123:" * 5000,
        "a@" * 25000,
        "www." * 12000,
        "http://" + "a." * 25000,
        "Mr. " * 12000,
        "Name: " * 8000,
        "(617) 555-0143 " * 3000,
        "Dr. A1 B2-C3 MRN: 12-34-56-78-90-12 " * 1500,
    ],
)
def test_long_odd_text_is_scanned_in_linear_time(text):
    t = time.perf_counter()
    phi.scan_text(text)
    assert time.perf_counter() - t < 5  # each takes well under a second; a quadratic pattern took minutes
