"""medtune.errors: MedtuneError, and first_line, what a one-line error quotes of the library error behind it."""

from medtune.errors import MedtuneError, first_line


def test_first_line_of_an_exception():
    assert first_line(OSError("disk full\nTraceback details")) == "disk full"
    assert first_line(ValueError("\n\n  bad value\nmore")) == "bad value"  # leading blank lines skipped
    assert first_line(KeyError()) == "KeyError"  # an empty message: the type's name
    assert first_line(RuntimeError("   ")) == "RuntimeError"
    assert first_line(RuntimeError("x" * 1000)) == "x" * 300


def test_medtune_error_is_an_exception_with_its_message():
    e = MedtuneError("config.yaml not found")
    assert isinstance(e, Exception) and str(e) == "config.yaml not found"
