"""Shared helpers: the project's invoke configuration, loaded the way `invoke` loads it."""

from __future__ import annotations

from pathlib import Path

from amltrain import config

ROOT = Path(__file__).resolve().parent.parent


def load_config(overrides: dict | None = None):
    return config.load(ROOT, overrides)
