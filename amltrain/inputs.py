"""The ``${{inputs.NAME}}`` syntax, shared by both backends: a data input's path, written where the script or
command needs it. It is Azure ML v2's own syntax, so a v2 job keeps it as written; run-local and SDK v1 replace
it with the path (or placeholder) where the input appears.
"""

from __future__ import annotations

import re
from collections.abc import Callable

INPUT_REF = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_]+)\s*\}\}")


def references(text: str) -> list[str]:
    """The input names ``text`` refers to, in order."""
    return INPUT_REF.findall(text)


def substitute(text: str, replace: Callable[[str], str]) -> str:
    """``text`` with each reference replaced by ``replace(NAME)``."""
    return INPUT_REF.sub(lambda match: replace(match.group(1)), text)


def whole_reference(text: str) -> str | None:
    """The input's name when ``text`` is nothing but one reference (a whole script argument), else None."""
    match = INPUT_REF.fullmatch(text)
    return match.group(1) if match else None
