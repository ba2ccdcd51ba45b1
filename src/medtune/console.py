"""What a medtune command shows on the terminal: medtune's own log lines (info and debug on stdout, warnings and
errors on stderr) and, from the libraries underneath (transformers, the hub, bitsandbytes, kernels, ...), errors
only: their warnings, hub look-ups and deprecation notices are shown with --verbose. Python warnings go through
logging too (logger `py.warnings`), so the same rule holds for them. Imports nothing heavy."""

from __future__ import annotations

import logging
import os
import sys


def is_medtune(name: str) -> bool:
    return name == "medtune" or name.startswith("medtune.")


class ConsoleHandler(logging.Handler):
    """The message alone, on the console. medtune's records pass at the level of the `medtune` logger; any other
    library's only at `library_level` or above. The stream is looked up at each line, so that a later redirection
    of sys.stdout (a test's capture, contextlib.redirect_stdout) takes effect."""

    def __init__(self, library_level: int = logging.ERROR):
        super().__init__()
        self.library_level = library_level

    def emit(self, record: logging.LogRecord) -> None:
        if not is_medtune(record.name) and record.levelno < self.library_level:
            return
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Configure logging once per command: the `medtune` loggers at `level` (under torchrun, rank 0 alone speaks: the
    other ranks show errors only), the libraries' errors (their warnings too at DEBUG, i.e. --verbose), everything
    through one ConsoleHandler on the root logger. A handler on the root also keeps a library's module-level
    logging.warning() from adding a second one (logging.basicConfig), which would print every line twice. Calling it
    again replaces the handler."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(h)
    root.addHandler(ConsoleHandler(logging.WARNING if level <= logging.DEBUG else logging.ERROR))
    logging.getLogger("medtune").setLevel(level if os.environ.get("RANK", "0") == "0" else max(level, logging.ERROR))
    logging.captureWarnings(False)  # let go of an earlier capture (in-process callers: tests), then capture again
    logging.captureWarnings(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizers' fork warning
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up lines, where it is installed


def route_libraries() -> None:
    """transformers and huggingface_hub print through handlers of their own: send their records to the root's
    ConsoleHandler instead, which shows their warnings with --verbose only. Importing transformers takes a second or
    more: called once a command needs the ML stack. Their progress bars ("Loading weights") stay off."""
    import huggingface_hub.utils.logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.set_verbosity(logging.WARNING)
    hf_logging.disable_progress_bar()
    hub_root = logging.getLogger("huggingface_hub")
    for h in [h for h in hub_root.handlers if not isinstance(h, ConsoleHandler)]:
        hub_root.removeHandler(h)
    hub_logging.enable_propagation()
    hub_logging.set_verbosity(logging.WARNING)


def progress_bars() -> bool:
    """Draw progress bars only on a terminal: redirected to a file, a bar's carriage returns and cursor moves would
    fill the log with escapes; there the log lines say how far a job is."""
    return sys.stderr.isatty() and logging.getLogger("medtune").isEnabledFor(logging.INFO)
