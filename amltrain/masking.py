"""Secret masking, in one place: every value the toolkit prints or records (dry runs, ``request.json``, error
lines, job summaries) goes through these functions, so a secret masked in one output is masked in all.

What counts as secret: a value whose name looks like one (``AZURE_CLIENT_SECRET``, ``--hf-token``), a value that
carries a storage key or SAS signature, and the credentials part of a URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Azure storage (artifact, blob) URLs carry SAS tokens in their query string.
_SAS_QUERY = re.compile(r"\?[^\s'\"()]*\bsig=[^\s'\"()]*")
SECRET_NAME = re.compile(r"(?i)(secret|token|password|passwd|credential|api_?key|access_?key|account_?key|sas"
                         r"|auth|connection_?string|private|(^|[_-])key$)")  # …_KEY: AZURE_STORAGE_KEY, OPENAI_KEY
SECRET_VALUE = re.compile(r"(?i)(accountkey|sharedaccesskey|sharedaccesssignature|sig)=")
MASK = "****"


def mask_url_credentials(text: str) -> str:
    """``https://user:pass@host`` -> ``https://****@host`` and a SAS query (``?…sig=…``) -> ``?****``."""
    return _SAS_QUERY.sub(f"?{MASK}", re.sub(r"(://)[^/@\s]+@", rf"\1{MASK}@", text))


def mask(name: str, value: str) -> str:
    """One named value (an environment variable, a setting)."""
    if SECRET_NAME.search(name) or SECRET_VALUE.search(value):
        return MASK
    return mask_url_credentials(value)


def mask_words(words: list[str]) -> list[str]:
    """A command line as printed: the value of an option named like a secret (``--hf-token X``,
    ``--api-key=X``) and credentials in URLs are masked."""
    def secret_option(name: str) -> bool:
        return name.startswith("-") and bool(SECRET_NAME.search(name.replace("-", "_")))

    masked_words, hide_next = [], False
    for word in words:
        name, sep, _ = word.partition("=")
        if hide_next:
            masked_words.append(MASK)
        elif sep and secret_option(name):
            masked_words.append(f"{name}={MASK}")
        else:
            masked_words.append(mask("", word))
        hide_next = not sep and secret_option(word)
    return masked_words


def mask_command(command: str) -> str:
    """A shell line (``--command``) as printed: its words masked as ``mask_words`` does."""
    return " ".join(mask_words(command.split(" ")))


def masked(value, key: str = ""):
    """A copy of plain data (a request body, a job's YAML) with secret-looking values replaced: variables and
    fields named like secrets, and options named like secrets in ``arguments`` lists and ``command`` lines."""
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        words = mask_words(list(value)) if key == "arguments" and all(isinstance(v, str) for v in value) else value
        return [masked(v, key) for v in words]
    if isinstance(value, str):
        return mask_command(value) if key == "command" else mask(key, value)
    return value
