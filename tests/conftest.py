"""Shared fixtures: the project's invoke configuration, loaded the way `invoke` loads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from invoke import Config

ROOT = Path(__file__).resolve().parent.parent


def load_config(overrides: dict | None = None) -> Config:
    """invoke.yaml < INVOKE_RUNTIME_CONFIG file < INVOKE_* variables < overrides (like task options)."""
    runtime = os.environ.get("INVOKE_RUNTIME_CONFIG")
    if runtime and not os.path.isabs(runtime):
        runtime = str(ROOT / runtime)
    cfg = Config(project_location=str(ROOT), runtime_path=runtime)
    cfg.load_project()
    cfg.load_runtime()
    cfg.load_shell_env()
    if overrides:
        cfg.load_overrides(overrides)
    return cfg


@pytest.fixture
def project_config():
    return load_config
