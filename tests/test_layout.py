"""The packages this project names generically resolve to this project, and the
maintained Faust fork is the one installed."""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["pipeline", "agents", "tables", "dashboard"])
def test_top_level_packages_are_this_projects(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_faust_is_the_maintained_fork():
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert "faust-streaming" in installed and "mode-streaming" in installed
    assert "faust" not in installed and "mode" not in installed


def test_readme_documents_every_setting():
    from pipeline.settings import describe

    readme = (ROOT / "README.md").read_text()
    missing = [env for _, env, _, _ in describe() if f"`{env}`" not in readme]
    assert not missing, f"README settings table lacks {missing}"
