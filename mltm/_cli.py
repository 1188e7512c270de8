"""Command-line error reporting shared by ``python -m mltm.train``, ``mltm.eval`` and
``mltm.data.manifest``.

A known error (a missing file or dataset directory, a bad config key or value, a bad
checkpoint, an unreadable manifest: the ``FileNotFoundError``/``OSError``/``ValueError``
that mltm raises with a message naming the problem and the fix) is printed as exactly one
line, ``error: <message>``, on stderr, and the command exits with status 2. ``--debug``
re-raises it instead, to show the traceback. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["EXIT_ERROR", "KNOWN_ERRORS", "add_debug_flag", "one_line", "run_cli"]

#: Exit status of a known error (argparse uses the same for usage errors).
EXIT_ERROR = 2


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, FloatingPointError]
    try:
        import yaml

        errors.append(yaml.YAMLError)  # a config file that is not valid YAML
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        pass
    return tuple(errors)


KNOWN_ERRORS = _known_errors()


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")


def one_line(error: BaseException) -> str:
    """The error's message on one line (YAML and OS errors span several)."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    if not text:
        text = type(error).__name__
    if type(error).__module__.startswith("yaml"):
        text = f"invalid YAML: {text}"
    return text


def run_cli(body: Callable[[], int], *, debug: bool) -> int:
    """Run ``body()``; report a known error as one ``error:`` line and return 2."""
    try:
        return body()
    except KNOWN_ERRORS as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
