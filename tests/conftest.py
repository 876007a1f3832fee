"""Shared helpers: the project's invoke configuration, loaded the way `invoke` loads it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from amltrain import config

ROOT = Path(__file__).resolve().parent.parent
# The entry point a user runs (`./dev invoke …` runs it): the console script beside this interpreter.
CLI = str(Path(sys.executable).with_name("amltrain"))


def copy_project(dst: Path, names: tuple[str, ...]) -> Path:
    """Copy files and folders of the project into ``dst``, so a test can change them freely."""
    for name in names:
        src, target = ROOT / name, dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, target) if src.is_dir() else shutil.copy(src, target)
    return dst


def load_config(overrides: dict | None = None):
    return config.load(ROOT, overrides)
