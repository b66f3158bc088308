"""Shipped model files, installed as package data (``eventformer.weights``).

The folder is the repository's ``weights/``, mapped into the package so that ``pip install .``,
a wheel and an editable install all carry the default model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The default model of ``infer`` and ``stream``: a tiny Spikformer trained on synthetic gestures.
SHIPPED_MODEL = "spikformer-tiny-synth.h5"


def shipped_model_path(name: str = SHIPPED_MODEL) -> Path | None:
    """Where the installed copy of a shipped model file is, or None if it is not installed."""
    path = Path(str(resources.files(__name__).joinpath(name)))
    return path if path.is_file() else None
