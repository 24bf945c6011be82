"""User-facing errors.

A :class:`UserError` is a mistake in what the user asked for (a bad flag, a missing folder, an unknown model).
The CLI prints its message on one line and exits with status 2, without a traceback; anything else is a bug and
keeps its traceback.

Must not: import anything of robustify's.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def did_you_mean(value: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6, quote: str = "'",
                 prefer: Iterable[str] = ()) -> str:
    """The hint every refusal of an unknown name gives (a flag, a config key, a zoo name, a converter): ``did you mean
    'x'?`` with the closest of ``choices`` (up to ``n``), or "" when none is close; ``prefer``: better guesses than
    spelling, taken first when there are any (a config key's name in another section). One spelling of the hint,
    so each caller only says where it goes in its line."""
    close = list(prefer)[:n] or difflib.get_close_matches(value, list(choices), n=n, cutoff=cutoff)
    return f"did you mean {', '.join(f'{quote}{c}{quote}' for c in close)}?" if close else ""


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A recipe or command-line value that is not accepted."""


class Interrupted(Exception):
    """Training was stopped by a signal (SIGTERM before preemption, Ctrl-C) after writing a checkpoint; the message
    says how to resume. Exit code 143 for SIGTERM, 130 for SIGINT, as shells report them."""

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code
