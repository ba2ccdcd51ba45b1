"""The one exception type the CLI turns into a single clear error line (exit code 2), and how a library's exception
becomes part of such a line."""

import contextlib
import difflib


class MedtuneError(Exception):
    """A problem with the user's input (file, config, model id...), reported without a traceback."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (at most 300 characters), or its type's name when the
    message is empty: what a MedtuneError quotes of the library error behind it."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def did_you_mean(given: str, known: list[str]) -> str:
    """'; did you mean X?' for the known name closest to a mistyped one (a dropped letter, a key in another
    section), or '' when none is close."""
    leaf = given.rsplit(".", 1)[-1]
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(given, known, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


class Problems:
    """Every problem one validation step finds (a MedtuneError each), refused once: a single problem as its own
    line, several as one message that names each on its own line. A config with three mistakes takes one run to fix,
    not three."""

    def __init__(self) -> None:
        self.found: list[str] = []

    @contextlib.contextmanager
    def check(self):
        """Run a check; a MedtuneError it raises is noted and the step goes on."""
        try:
            yield
        except MedtuneError as e:
            if str(e) not in self.found:
                self.found.append(str(e))

    def refuse(self) -> None:
        """Raise the problems found, if any."""
        if len(self.found) == 1:
            raise MedtuneError(self.found[0])
        if self.found:
            raise MedtuneError(f"{len(self.found)} problems:\n" + "\n".join(f"  {p}" for p in self.found))
