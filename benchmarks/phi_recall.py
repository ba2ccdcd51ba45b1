"""The PHI detector (medtune.phi) measured: recall and precision by type on the synthetic planted set and the two
hand-written note sets of tests/phi_synthetic.py, false positives on the clean medical sentences, and findings on
the real WikiDoc data (when ../shared/data is present), with timings. Not a test.

    python benchmarks/phi_recall.py [--show] [--presidio SPACY_MODEL] [--no-wikidoc]

--show prints each miss and each false positive. --presidio also runs Microsoft Presidio (presidio-analyzer, when
installed, with the given spaCy model package) on the same sets, for comparison; Presidio's entity types are
matched to ours by overlap only (any type), which favours it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import phi_synthetic as syn  # noqa: E402

from medtune import phi  # noqa: E402

WIKIDOC = ROOT.parent / "shared" / "data" / "wikidoc_patient_information" / "wikidoc_patient_information.json"


def _overlap(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def measure(notes: list[dict], scan, typed: bool = True):
    """(hits, planted, found, false) counters by type; scan(text) -> [(type, start, end)]."""
    hit, total, found, false = Counter(), Counter(), Counter(), Counter()
    misses, extras = [], []
    for note in notes:
        got = scan(note["text"])
        for kind, s, e in note["spans"]:
            total[kind] += 1
            if any((f[0] == kind or not typed) and _overlap(f, (kind, s, e)) for f in got):
                hit[kind] += 1
            else:
                misses.append((kind, note["text"][s:e], note["text"]))
        for f in got:
            found[f[0]] += 1
            if not any((f[0] == k or not typed) and _overlap(f, (k, s, e)) for k, s, e in note["spans"]):
                false[f[0]] += 1
                extras.append((f[0], note["text"][f[1] : f[2]], note["text"]))
    return hit, total, found, false, misses, extras


def table(title: str, notes: list[dict], scan, typed: bool = True, show: bool = False) -> None:
    t = time.perf_counter()
    hit, total, found, false, misses, extras = measure(notes, scan, typed)
    seconds = time.perf_counter() - t
    print(f"\n{title}: {sum(total.values())} planted identifiers in {len(notes)} notes ({seconds:.2f}s)")
    print(f"{'type':<12} {'planted':>7} {'found':>6} {'recall':>7} {'precision':>9}")
    for kind in phi.TYPES:
        if total[kind] or found[kind]:
            prec = (found[kind] - false[kind]) / found[kind] if found[kind] else float("nan")
            rec = hit[kind] / total[kind] if total[kind] else float("nan")
            print(f"{kind:<12} {total[kind]:>7} {hit[kind]:>6} {rec:>7.1%} {prec:>9.1%}")
    n_found = sum(found.values())
    n_hit, n_total = sum(hit.values()), sum(total.values())
    print(
        f"{'all':<12} {n_total:>7} {n_hit:>6} {n_hit / n_total:>7.1%} "
        f"{(n_found - sum(false.values())) / max(n_found, 1):>9.1%}"
    )
    if show:
        for kind, value, text in misses:
            print(f"  miss {kind} {value!r} in {text!r}")
        for kind, value, text in extras:
            print(f"  extra {kind} {value!r} in {text!r}")


def clean_report(title: str, sentences: list[str], scan, show: bool = False) -> None:
    t = time.perf_counter()
    flagged = [(s, scan(s)) for s in sentences]
    flagged = [(s, f) for s, f in flagged if f]
    seconds = time.perf_counter() - t
    kinds = Counter(k for _, f in flagged for k, _, _ in f)
    print(
        f"\n{title}: {len(flagged)} of {len(sentences)} clean sentences flagged "
        f"({len(flagged) / len(sentences):.1%}; {seconds:.2f}s) {dict(kinds)}"
    )
    if show:
        for s, f in flagged:
            print(f"  {[(k, s[a:b]) for k, a, b in f]} in {s!r}")


def presidio_scanner(model: str):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine())
    ignored = {"ORGANIZATION", "NRP"}  # not identifiers of a person

    def scan(text: str):
        return [
            (r.entity_type, r.start, r.end) for r in engine.analyze(text, language="en") if r.entity_type not in ignored
        ]

    return scan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--show", action="store_true", help="print every miss and false positive")
    ap.add_argument("--presidio", metavar="SPACY_MODEL", help="also run Presidio with this spaCy model package")
    ap.add_argument("--no-wikidoc", action="store_true", help="skip the WikiDoc scan (about 10 s), e.g. in CI")
    args = ap.parse_args()

    planted = syn.planted()
    which = ((1, {}), (2, {"second": True}), (3, {"third": True}), (4, {"fourth": True}))
    held = {n: syn.heldout(**kw) for n, kw in which}
    clean = syn.all_clean()
    table(
        "Synthetic planted set (generator and detector both ours: an upper bound)",
        planted,
        phi.scan_text,
        show=args.show,
    )
    for n, notes in held.items():
        note = " (never tuned on: the honest estimate)" if n == 4 else " (its misses led to fixes)"
        table(f"Hand-written notes, set {n}{note}", notes, phi.scan_text, show=args.show)
    clean_report("Clean medical sentences", clean, phi.scan_text, show=args.show)

    if args.presidio:
        scan = presidio_scanner(args.presidio)
        table("Presidio, synthetic planted set (any type)", planted, scan, typed=False)
        for n, notes in held.items():
            table(f"Presidio, hand-written notes, set {n} (any type)", notes, scan, typed=False)
        clean_report("Presidio, clean medical sentences", clean, scan, show=args.show)

    if args.no_wikidoc:
        print("\nWikiDoc skipped (--no-wikidoc)")
    elif WIKIDOC.is_file():
        records = json.loads(WIKIDOC.read_text(encoding="utf-8"))
        t = time.perf_counter()
        findings = phi.scan_records(records)
        seconds = time.perf_counter() - t
        print(
            f"\nWikiDoc ({len(records):,} records): {len(findings)} findings in "
            f"{len({f.row for f in findings})} rows, {seconds:.1f}s: {phi.count_by_type(findings)}"
        )
        if args.show:
            for f in findings:  # printed on the terminal only, never written to a file
                text = records[f.row - 1][f.field]
                print(f"  row {f.row} {f.field} {f.type} {text[f.start : f.end]!r}")
    else:
        print(f"\n{WIKIDOC} not present: WikiDoc skipped")


if __name__ == "__main__":
    main()
