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
    conda, pip = [], []
    for entry in doc["dependencies"]:
        if isinstance(entry, str):
            if _package_name(entry) not in INTERPRETER_PACKAGES:
                conda.append(entry.strip())
        elif isinstance(entry, dict) and set(entry) == {"pip"} and isinstance(entry["pip"], list):
            for req in entry["pip"]:
                if not isinstance(req, str) or not req.strip():
                    raise CondaSpecError(f"conda spec {path}: pip entry {req!r} is not a requirement string")
                pip.append(req.strip())
        else:
            raise CondaSpecError(f"conda spec {path}: dependency {entry!r} is neither a package nor a 'pip:' list")
    return CondaSpec(path=path, conda_packages=tuple(conda), pip_requirements=tuple(pip))


def load(path: str | Path) -> CondaSpec:
    p = Path(path)
    if not p.is_file():
        raise CondaSpecError(f"conda spec {path} does not exist")
    return parse(p.read_text(encoding="utf-8"), str(path))


def main(argv: list[str]) -> int:
    """``condaspec.py SPEC pip|conda``: print the pip requirements or the conda packages, one per line."""
    if len(argv) != 2 or argv[1] not in ("pip", "conda"):
        print("usage: condaspec.py SPEC pip|conda", file=sys.stderr)
        return 2
    try:
        spec = load(argv[0])
    except CondaSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = spec.pip_requirements if argv[1] == "pip" else spec.conda_packages
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
