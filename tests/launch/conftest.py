"""Helpers for the launch tests: tiny launch files written to tmp_path."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_launch(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_launch(text, name="launch.yaml") -> path of a launch file holding `text`."""

    def write(text: str, name: str = "launch.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
