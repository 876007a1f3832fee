"""Fixtures shared by the unit tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def workspace_config(tmp_path):
    """A workspace config.json (no Azure behind it), selected the way a user would: INVOKE_AZURE_CONFIG_FILE."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"subscription_id": "00000000-1111-2222-3333-444444444444",
                                "resource_group": "rg", "workspace_name": "ws"}))
    return {"INVOKE_AZURE_CONFIG_FILE": str(path)}
