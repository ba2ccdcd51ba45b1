"""The one exception type the CLI turns into a single clear error line (exit code 2), and how a library's exception
becomes part of such a line."""


class MedtuneError(Exception):
    """A problem with the user's input (file, config, model id...), reported without a traceback."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (at most 300 characters), or its type's name when the
    message is empty: what a MedtuneError quotes of the library error behind it."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
