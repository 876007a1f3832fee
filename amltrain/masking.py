"""Secret masking, in one place: every value the toolkit prints or records (dry runs, ``request.json``, error
lines, job summaries) goes through these functions, so a secret masked in one output is masked in all.

What counts as secret: a value whose name looks like one (``AZURE_CLIENT_SECRET``, ``--hf-token``), a value that
carries a storage key or SAS signature, and the credentials part of a URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import cut

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


def _secret_option(name: str) -> bool:
    return name.startswith("-") and bool(SECRET_NAME.search(name.replace("-", "_")))


# ``NAME=VALUE`` with NAME an environment variable or option name (``HF_TOKEN=…`` before a command,
# ``'MY-TOKEN=…'`` quoted in an error line): the value is masked when the name looks like a secret's.
_ASSIGNMENT = re.compile(r"""^(['"]?-{0,2}[A-Za-z_][\w.-]*)=(.*)$""", re.S)


def mask_words(words: list[str], lines: bool = True) -> list[str]:
    """A command line as printed: the value of an option named like a secret (``--hf-token X``,
    ``--api-key=X``), of a secret-named ``NAME=VALUE`` and credentials in URLs are masked. A word that is
    itself a shell line (``sh -c "… --hf-token X"``) is masked as one (``mask_command``), unless ``lines`` is
    false (the words of such a line)."""
    masked_words, hide_next = [], False
    for word in words:
        assignment = _ASSIGNMENT.match(word)
        name = assignment.group(1) if assignment else word
        if hide_next:
            masked_words.append(MASK)
        elif assignment and SECRET_NAME.search(name.lstrip("'\"-").replace("-", "_")):
            quote = name[0] if name[0] in "'\"" and word.endswith(name[0]) else ""  # 'NAME=…' in a message
            masked_words.append(f"{name}={MASK}{quote}")
        elif lines and any(c.isspace() for c in word):
            masked_words.append(mask_command(word))
        else:
            masked_words.append(mask("", word))
        hide_next = not assignment and _secret_option(word)
    return masked_words


# One word of a shell line: unquoted characters, backslash escapes and quoted strings ('…', "…") that touch.
_SHELL_WORD = re.compile(r"""(?:[^\s'"\\]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")+""", re.S)
_PLAIN_WORD = re.compile(r"\S+")


def _mask_spans(text: str, word: re.Pattern) -> str:
    spans = [m.span() for m in word.finditer(text)]
    replaced = mask_words([text[start:end] for start, end in spans], lines=False)
    out, last = [], 0
    for (start, end), masked_word in zip(spans, replaced, strict=True):
        out += [text[last:start], masked_word]
        last = end
    return "".join(out) + text[last:]


def mask_command(command: str) -> str:
    """A shell line (``--command``, the ``sh -c`` word) as printed: its words, quotes respected, masked as
    ``mask_words`` does; spacing is kept."""
    return _mask_spans(command, _SHELL_WORD)


# ``user:password@host`` without a scheme (a path that swallowed the ``//`` of a URL, a bare ``host`` setting).
_BARE_CREDENTIALS = re.compile(r"(?<![\w@])[\w.%+-]+:[^\s/@'\"]+@(?!sha\d+:)(?=[\w.-])")


def mask_text(text: str) -> str:
    """Free text (an error line, a warning): secret-looking words masked as in a command line, split at
    whitespace, and credentials before an ``@`` even where the URL's ``//`` was lost."""
    return _BARE_CREDENTIALS.sub(f"{MASK}@", _mask_spans(text, _PLAIN_WORD))


ERROR_LINE_LIMIT = 800


def error_line(message: str) -> str:
    """What the user sees of a failure: ``error: `` and the message masked, on one line, cut between words."""
    return "error: " + cut(mask_text(str(message)), ERROR_LINE_LIMIT)


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
