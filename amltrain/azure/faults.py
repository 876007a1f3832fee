"""Why an Azure ML run failed, in classes that say whether running it again can help (``submit --retries``).

Classified from the service's own error (code and message), never from its category alone: Azure ML reports a
preemption as ``UserError`` ("AzureMLCompute job failed. PreemptionError: …"), so a category says nothing about
whose fault it was. The infrastructure classes are matched first, by the service's error names and wording; a
script that exited non-zero is a user error and is never retried; anything not recognised is not retried either
(a retry must be a known good bet). The payloads each class was built from, with their sources, are in
``tests/azure_payloads.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import cut


@dataclass(frozen=True)
class Verdict:
    kind: str  # the class, in words: "preempted", "user error", …
    retry: bool
    said: str = ""  # the service's words, on one line

    def line(self) -> str:
        return f"{self.kind} ({self.said})" if self.said else self.kind


# (class, pattern over "CODE: MESSAGE"), first match wins. Each is an infrastructure fault a new attempt on the
# same checkpoints can get past. A preemption is named by the service; the others are checked after USER, so a
# script's own words ("timed out reading image …") in a user error never make it one.
RETRIED = (
    ("preempted", r"PreemptionError|pre-?empt(ed|ion)"),
    ("node failure", r"NodeFailure|node (failure|failed|became unusable|is unusable|unhealthy|was lost)|"
                     r"unusable node|lost contact with (the )?node"),
    ("image pull timeout", r"(Client\.Timeout exceeded|TLS handshake timeout|context deadline exceeded)[\s\S]*"
                           r"(docker|pull|image|environment preparation)|(docker|pull|image)[\s\S]*"
                           r"(Client\.Timeout exceeded|TLS handshake timeout|context deadline exceeded)"),
    ("disk full on node", r"DiskFullError|disk (is )?full (on|while)|out of disk space on (the )?node"),
    ("compute not available", r"is in failed state and thus not ready for runs|AllocationFailed|"
                              r"ZonalAllocationFailed|not enough (quota|capacity)|capacity (is )?not available"),
    ("service error", r"^(ServiceError|InternalServerError|InternalError)\b|"
                      r"An internal (server )?error occurred"),
)
USER = r"exited with (status|exit) code|non-zero exit code|User program failed|ExitCode:\s*[1-9]|UserProcessExit"


def classify(status: str, code: str = "", message: str = "") -> Verdict:
    """The class of a run that ended ``status``, from its error's ``code`` and ``message``."""
    said = cut(" ".join(f"{code + ': ' if code and code not in message else ''}{message}".split()), 200)
    if status == "Completed":
        return Verdict("completed", False)
    if status != "Failed":  # Canceled (by someone), NotResponding: a person's decision or unknown
        return Verdict(status.lower() or "unknown status", False, said)
    text = f"{code}: {message}" if code else message
    preempted, *others = RETRIED
    if re.search(preempted[1], text, re.IGNORECASE):
        return Verdict(preempted[0], True, said)
    if re.search(USER, text, re.IGNORECASE):
        return Verdict("user error", False, said)
    for kind, pattern in others:
        if re.search(pattern, text, re.IGNORECASE):
            return Verdict(kind, True, said)
    return Verdict("unrecognised failure", False, said or "the run reported no error")
