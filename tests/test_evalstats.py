"""Bootstrap intervals and the gibberish signal of `medtune eval`."""

import json
import random

import pytest

from medtune.data import SAMPLE
from medtune.evalstats import bootstrap_ci, english_words, gibberish_reason, gibberish_share, is_gibberish, word_kind


def test_bootstrap_interval_contains_the_mean_narrows_with_n_and_is_seeded():
    small = [0, 1, 1, 0, 1, 0, 1, 1]
    lo, hi = bootstrap_ci(small, 2000, seed=1)
    assert lo < sum(small) / len(small) < hi
    lo2, hi2 = bootstrap_ci(small * 20, 2000, seed=1)
    assert hi2 - lo2 < (hi - lo) / 2
    assert bootstrap_ci(small, 500, seed=3) == bootstrap_ci(small, 500, seed=3)
    assert bootstrap_ci([], 100) == (None, None) and bootstrap_ci([1.0], 0) == (None, None)


@pytest.mark.parametrize(
    "text",
    [
        "The condition is treated with HETATMIMPAUDIA PROVOKATIONSWERTE XKCDZZQ and rest.",
        "the patient rRPPpAAA qwrtpsdf mnbvcxzl zzkkqqrr",
        "Asthma is a condition. xqzt xqzt xqzt xqzt",
        "word " * 5 + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa " * 3,
    ],
)
def test_junk_counts(text):
    assert is_gibberish(text)


@pytest.mark.parametrize(
    "text",
    [
        "COPD and HIV patients need HbA1c 7.2% checks; LDL 130 mg/dL; SARS-CoV-2, BRCA1, IgE, ECG, MRSA.",
        "Take 500 mg twice daily for 10 days; blood pressure 120/80 mmHg.",
        "Parkinson disease is a movement disorder. Call 911 if symptoms get worse.",
        "",
        "Yes.",
        "No, it is not contagious.",
        "It isn't contagious, so you don't need antibiotics; they won't help and can't shorten it.",
        "Symptoms include:\n- fever\n- chills\n- a dry cough\n- shortness of breath\n- tiredness",
        "Fever, chills, cough, sore throat, headache, muscle aches, tiredness, nausea and vomiting.",
        "Hepatitis A, B, and C are infections of the liver. Vitamin A and D deficiency is rare.",
        "Common causes are Staphylococcus aureus, Streptococcus pyogenes and Escherichia coli, treated with "
        "flucloxacillin or, in penicillin allergy, clarithromycin.",
        "Thrombocytopenia with hepatosplenomegaly suggests hypersplenism; the haematologist orders a bone marrow "
        "biopsy and immunophenotyping.",
        "SYMPTOMS OF ACUTE INFECTIOUS DISEASE\nFever and malaise. The patient's doctor - not a pharmacist - decides.",
        "Iron deficiency anemia is a condition in which blood lacks adequate healthy red blood cells. Eating iron-rich "
        "foods such as red meat, beans and leafy greens, and taking supplements if a doctor advises it, can help.",
    ],
)
def test_fluent_text_is_not_gibberish(text):
    assert gibberish_reason(text) is None


@pytest.mark.parametrize(
    "text,reason",
    [
        (",,,,,", "punctuation"),
        (". . . . . . . .", "punctuation"),
        ("!!!!!!????", "punctuation"),
        # the tiny preset's base model (random weights): random token soup
        (
            "mg cases!ansni immuneyl ment does endile noseeoc you} gluX sick gluner F headacheically fur diffe "
            "comesidneynerOl immune grow cont bonesible two brieflyasaluagedleop",
            "non-words",
        ),
        (
            "oc sleep cont Other see bab mainlygent ment cond pati da gent Check gentot viral makeci apply% stiffgg "
            "bri you en does does hot cons\ufffd exposureasalin unusualWhen\ufffd} qu",
            "non-words",
        ),
        # token soup of real words and word pieces, as a random model over GPT-2's vocabulary writes
        (
            "divest where cur Esometimes dismantledConsider agonress fulfil gexsteel breaches tropes meters "
            "alongside Plaintiff dwindling independently",
            "no grammar",
        ),
        # the tiny preset's tuned model: real words, no sentence
        ("and tooth, andC, and and and is is dry.", "broken grammar"),
        (
            "and or, and high and tooth is and vaccine. It is a toothne, or services vegetables and read.",
            "broken grammar",
        ),
        ("The the of is a and the flu, the. Of the is.", "broken grammar"),
        ("Fever and or and cough and or and rash and or and.", "broken grammar"),
        ("Fever and cough and or rash and pain or and", "broken grammar"),
        ("and", "closed-class words only"),
        ("the of", "closed-class words only"),
    ],
)
def test_word_salad_is_gibberish(text, reason):
    assert gibberish_reason(text) == reason


def test_word_kinds():
    assert english_words() >= {"the", "fever", "vaccine", "hepatitis", "dehydration", "running"}
    assert [word_kind(w) for w in ["fever", "Fever", "FEVER", "well-known", "patient's"]] == [1] * 5
    assert [word_kind(w) for w in ["isn't", "doesn’t", "can't", "won't", "they've", "Okonkwo's"]] == [1] * 5 + [0]
    assert [word_kind(w) for w in ["COPD", "IgE", "mmHg", "HbA1c", "Okonkwo", "120"]] == [0] * 6
    assert [word_kind(w) for w in ["immuneyl", "gentWhengn", "toothWh", "TREATMENTEX", "fever-ish-ment"]] == [-1] * 5


def test_random_token_soup_is_flagged_and_the_sample_answers_are_not(tok):
    """Decoded random ids of the builtin tokenizer (what a random model writes) against medtune's own answers."""
    rng = random.Random(0)
    soup = [tok.decode([rng.randrange(len(tok)) for _ in range(rng.randint(20, 120))]) for _ in range(200)]
    assert gibberish_share(soup) >= 0.95
    answers = [json.loads(line)["output"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(answers) > 200 and gibberish_share(answers) == 0


def test_wikidoc_reference_answers_are_not_gibberish(shared):
    path = shared / "wikidoc_patient_information" / "wikidoc_patient_information.json"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    records = json.loads(path.read_text(encoding="utf-8"))
    answers = [r["output"] for r in records] + [r["input"] for r in records]
    # measured: 1 of 11,884 (a list of rare medical terms)
    assert sum(map(is_gibberish, answers)) <= 3


def test_share():
    assert gibberish_share([]) is None
    assert gibberish_share(["fine text here", "HETATMIMPAUDIA PROVOKATIONSWERTE XKCDZZQ"]) == 0.5
