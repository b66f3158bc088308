"""Shared test fixtures: where ../shared is, and skip reasons when it or torch is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GESTURE_DIR = SHARED / "data" / "events" / "dvs-gesture"
MODELS_DIR = SHARED / "data" / "models"
OFFICIAL_CKPT = MODELS_DIR / "spikformer-dvs-calibrated.pth"
GOLDEN = MODELS_DIR / "spikformer-dvs-calibrated.golden.json"

# the plain-torch reference lives beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_error_line(result) -> str:
    """A CLI run that failed as a user's mistake should: exit code 2, one line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def need_gesture():
    if not GESTURE_DIR.is_dir():
        pytest.skip(f"real DVS Gesture segments not found at {GESTURE_DIR} (../shared is absent)")
    return GESTURE_DIR


def need_official():
    if not OFFICIAL_CKPT.is_file() or not GOLDEN.is_file():
        pytest.skip(f"official checkpoint and golden outputs not found in {MODELS_DIR}")
    need_gesture()

# CI runs the property tests on a fixed set of examples, so a red build is reproducible;
# locally hypothesis keeps exploring new ones.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
