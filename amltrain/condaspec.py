"""Read a conda environment spec (``conda/*.yml``), the single source of an image's Python dependencies.

It runs in two places: on the host (validation, and its bytes feed the image tag) and inside the
image build, bind-mounted by the Dockerfiles, where ``conda/install-deps.sh`` calls it as a script to
split the spec into conda packages and pip requirements. So it imports only the standard library and
PyYAML, and nothing from the rest of the package.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Conda entries every base image already satisfies: the interpreter and its installer.
INTERPRETER_PACKAGES = frozenset({"python", "pip"})


class CondaSpecError(ValueError):
    """The spec cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class CondaSpec:
    path: str
    conda_packages: tuple[str, ...]  # beyond python/pip: these need conda in the base image
    pip_requirements: tuple[str, ...]
    channels: tuple[str, ...] = ()
    python: str = ""  # the version constraint of the python entry, e.g. ">=3.10"; checked against the base


def python_satisfies(constraint: str, version: tuple[int, ...]) -> bool:
    """Whether an interpreter version meets a conda version constraint such as ``>=3.10,<3.13`` or ``=3.11``.

    The base image's interpreter is used as it is (the spec cannot change it without a conda solve), so
    the build checks it instead of silently ignoring the pin. As in conda, ``=3.10`` and ``3.10.*`` match
    the 3.10 series, comparisons compare whole versions (3.10.14 > 3.10), a build string is ignored.
    """
    for clause in constraint.replace(" ", "").split(","):
        if not clause:
            continue
        match = re.fullmatch(r"(>=|<=|==|!=|>|<|=)?(\d+(?:\.\d+)*)(\.\*)?(=[^,]*)?", clause)
        if not match:
            raise CondaSpecError(f"python version constraint {clause!r} is not understood")
        op, star = match.group(1) or "=", bool(match.group(3))
        want = tuple(int(x) for x in match.group(2).split("."))
        if op == "=" or star:  # the series: 3.10 matches 3.10.x
            same = tuple(version[: len(want)]) == want
            ok = not same if op == "!=" else same
        else:
            width = max(len(want), len(version))
            have, want = tuple(version) + (0,) * (width - len(version)), want + (0,) * (width - len(want))
            ok = {"==": have == want, "!=": have != want, ">=": have >= want, "<=": have <= want,
                  ">": have > want, "<": have < want}[op]
        if not ok:
            return False
    return True


def _package_name(entry: str) -> str:
    return re.split(r"[\s=<>!~]", entry.strip(), maxsplit=1)[0].split("::")[-1].lower()


def parse(text: str, path: str = "<spec>") -> CondaSpec:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise CondaSpecError(f"conda spec {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies"), list):
        raise CondaSpecError(f"conda spec {path} has no 'dependencies:' list")
    conda, pip, python = [], [], ""
    for entry in doc["dependencies"]:
        if isinstance(entry, str):
            name = _package_name(entry)
            if name == "python":
                python = entry.strip().split("::")[-1][len("python"):].strip()
            elif name not in INTERPRETER_PACKAGES:
                conda.append(entry.strip())
        elif isinstance(entry, dict) and set(entry) == {"pip"} and isinstance(entry["pip"], list):
            for req in entry["pip"]:
                if not isinstance(req, str) or not req.strip():
                    raise CondaSpecError(f"conda spec {path}: pip entry {req!r} is not a requirement string")
                pip.append(req.strip())
        else:
            raise CondaSpecError(f"conda spec {path}: dependency {entry!r} is neither a package nor a 'pip:' list")
    channels = doc.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise CondaSpecError(f"conda spec {path}: 'channels:' must be a list of names")
    if python:
        python_satisfies(python, (3, 10))  # refuse a constraint we cannot read now, not inside the build
    return CondaSpec(path=path, conda_packages=tuple(conda), pip_requirements=tuple(pip), channels=tuple(channels),
                     python=python)


def load(path: str | Path) -> CondaSpec:
    p = Path(path)
    if not p.is_file():
        raise CondaSpecError(f"conda spec {path} does not exist")
    return parse(p.read_text(encoding="utf-8"), str(path))


MODES = ("pip", "conda", "channels", "check-python")


def main(argv: list[str]) -> int:
    """``condaspec.py SPEC MODE``: print the pip requirements, conda packages or channels one per line, or
    (check-python) fail with one line when this interpreter does not meet the spec's python entry."""
    if len(argv) != 2 or argv[1] not in MODES:
        print(f"usage: condaspec.py SPEC {'|'.join(MODES)}", file=sys.stderr)
        return 2
    try:
        spec = load(argv[0])
    except CondaSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if argv[1] == "check-python":
        have = ".".join(map(str, sys.version_info[:3]))
        if spec.python and not python_satisfies(spec.python, tuple(sys.version_info[:3])):
            print(f"error: {spec.path} asks for python{spec.python}, the base image has {have}; "
                  "change the spec or the base image", file=sys.stderr)
            return 1
        return 0
    lines = {"pip": spec.pip_requirements, "conda": spec.conda_packages, "channels": spec.channels}[argv[1]]
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
