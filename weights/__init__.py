"""Shipped model files, installed as package data (``eventformer.weights``).

The folder is the repository's ``weights/``, mapped into the package so that ``pip install .``,
a wheel and an editable install all carry the shipped models. Each is known by a short name (its
attention operator), which ``--weights`` accepts in place of a path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The default model of ``infer``, ``stream`` and ``compare``: a tiny Spikformer (SSA attention)
#: trained on synthetic gestures.
SHIPPED_MODEL = "spikformer-tiny-synth.h5"

#: The name a shipped model is given on the command line (``--weights ds2ta``) -> its file here:
#: the four tiny Spikformers by attention operator, then Spikformer's successors by family.
SHIPPED_MODELS = {
    "ssa": SHIPPED_MODEL,
    "ds2ta": "spikformer-tiny-ds2ta-synth.h5",
    "ssa_bin": "spikformer-tiny-ssa_bin-synth.h5",
    "saformer": "spikformer-tiny-saformer-synth.h5",
    "qkformer": "qkformer-tiny-synth.h5",
    "sdt": "sdt-tiny-synth.h5",
}

#: The name of the default model.
DEFAULT_MODEL = "ssa"

#: Where the installed model files are (tests point it elsewhere).
FOLDER = Path(str(resources.files(__name__)))


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path | None:
    """Where the installed copy of a shipped model is, or None if it is not installed.

    ``name`` is a model's name (``ssa``, ``ds2ta``, ...; see SHIPPED_MODELS) or its file name.
    """
    path = FOLDER / SHIPPED_MODELS.get(name, name)
    return path if path.is_file() else None


def installed_models() -> dict[str, Path]:
    """The shipped models installed with this copy, name -> path, in SHIPPED_MODELS' order."""
    found = {name: shipped_model_path(name) for name in SHIPPED_MODELS}
    return {name: path for name, path in found.items() if path is not None}


def shipped_model_name(path: Path) -> str | None:
    """The name of the shipped model at ``path``, or None if it is not one."""
    for name in SHIPPED_MODELS:
        shipped = shipped_model_path(name)
        if shipped is not None and Path(path).resolve() == shipped.resolve():
            return name
    return None
