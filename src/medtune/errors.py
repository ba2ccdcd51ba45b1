"""The one exception type the CLI turns into a single clear error line (exit code 2)."""


class MedtuneError(Exception):
    """A problem with the user's input (file, config, model id...), reported without a traceback."""
