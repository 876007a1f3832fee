"""The one exception users see: a message that says what was given and what to do, and an exit code."""

from __future__ import annotations


class ToolkitError(Exception):
    """An anticipated failure, shown to the user as one line (no traceback).

    ``hint`` says what to do about it; ``exit_code`` is what the task exits with (a failed training
    container passes its own code through).
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def cut(text: str, limit: int = 300) -> str:
    """``text`` on one line and at most about ``limit`` characters, cut between words (never inside a token,
    which could leave half a secret or an unusable path) and marked with `…` where it was cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit + 1].rsplit(" ", 1)[0]
    return (head if head != text[:limit + 1] else text[:limit]) + " …"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's reason on one line: docker-py's ``explanation`` (the engine's own words) when it has one."""
    return cut((str(getattr(exc, "explanation", None) or exc).splitlines() or [""])[0], limit)
