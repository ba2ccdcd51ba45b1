"""Bootstrap intervals and the gibberish signal of `medtune eval`."""

import pytest

from medtune.evalstats import bootstrap_ci, gibberish_share, is_gibberish


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
    ],
)
def test_medical_text_does_not(text):
    assert not is_gibberish(text)


def test_share():
    assert gibberish_share([]) is None
    assert gibberish_share(["fine text here", "HETATMIMPAUDIA PROVOKATIONSWERTE XKCDZZQ"]) == 0.5
