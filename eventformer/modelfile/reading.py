"""Reading a model file's HDF5 objects so that anything damaged is one sentence naming it.

A model file may have been edited by hand, truncated, or had bytes flipped on disk: every
attribute and dataset the loader uses goes through these readers, which check its type,
finiteness and range (and a dataset's shape before its data is read, so that a damaged shape
cannot ask for gigabytes). Errors raised inside h5py while reading a damaged structure become
one :class:`ModelFileError` too (:func:`hdf5_damage`).
"""

from __future__ import annotations

import math
import os
import stat
import traceback

import numpy as np

from ..errors import ModelFileError

# No trained network has weights or neuron parameters this large; sums of a layer's inputs
# (up to ~1e6 synapses, event counts up to ~1e3) stay well inside float32 below it.
MAX_MAGNITUDE = 1e20

# kinds of special files, as ``ls -l`` would tell them
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_model_path(path: str) -> None:
    """Refuse a missing path, a directory or a special file before HDF5 opens it: opening a FIFO
    waits for a writer forever, a device reads without end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        hint = "" if stat.S_ISDIR(mode) else " (give a regular .h5 file)"
        raise ModelFileError(f"{path}: is {file_kind(mode)}, not a model file{hint}")
    if not os.access(path, os.R_OK):
        raise ModelFileError(f"{path}: cannot be read (permission denied)")


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for a sentence ("is a FIFO (named pipe)")."""
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file")


def hdf5_damage(exc: BaseException, path: str) -> ModelFileError | None:
    """The sentence for an exception h5py raised while reading a damaged file; None when the
    exception did not come from inside h5py (a bug here must not pass for damage)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not any(f"{os.sep}h5py{os.sep}" in frame.filename for frame in frames):
        return None
    lines = str(exc).strip().splitlines()
    reason = lines[0].rstrip(".") if lines else type(exc).__name__
    return ModelFileError(f"{path}: the model file is damaged, HDF5 cannot read part of it "
                          f"({reason})")


def where(obj, key: str | None = None) -> str:
    """An HDF5 object's name for messages, without the leading slash ("layers/head/theta")."""
    name = obj.name.strip("/")
    if key is None:
        return name or "the file"
    return f"{name}/{key}" if name else key


def text(value, what: str, path: str) -> str:
    """An attribute that must be text."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise ModelFileError(f"{path}: {what} is not UTF-8 text") from None
    if isinstance(value, (str, np.str_)):
        return str(value)
    raise ModelFileError(f"{path}: {what} is {_shown(value)}, expected text")


def integer(value, what: str, path: str, low: int, high: int) -> int:
    """An attribute or configuration value that must be an integer within [low, high]."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ModelFileError(f"{path}: {what} is {_shown(value)}, expected an integer")
    if not low <= int(value) <= high:
        raise ModelFileError(f"{path}: {what} is {int(value)}, expected {_range(low, high)}")
    return int(value)


def number(value, what: str, path: str, *, low: float | None = None, low_open: bool = False,
           high: float | None = None) -> float:
    """An attribute or configuration value that must be a finite number (within the bounds)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise ModelFileError(f"{path}: {what} is {_shown(value)}, expected a number")
    x = float(value)
    if not math.isfinite(x):
        raise ModelFileError(f"{path}: {what} is {x}, expected a finite number")
    if low is not None and (x <= low if low_open else x < low):
        raise ModelFileError(f"{path}: {what} is {x:g}, expected "
                             f"{'more than' if low_open else 'at least'} {low:g}")
    if high is not None and x > high:
        raise ModelFileError(f"{path}: {what} is {x:g}, expected at most {high:g}")
    return x


def flag(value, what: str, path: str) -> bool:
    """A yes/no attribute: a boolean (or the integers 0 and 1, as HDF5 tools may store it)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    raise ModelFileError(f"{path}: {what} is {_shown(value)}, expected true or false")


def attr(obj, key: str, path: str, default=None, *, required: bool = True):
    """The raw value of an attribute of ``obj``; a missing one is named (unless not required,
    then ``default``)."""
    if key not in obj.attrs:
        if required:
            raise ModelFileError(f"{path}: {where(obj)} lacks the attribute {key!r}")
        return default
    return obj.attrs[key]


def _dataset(group, key: str, path: str):
    """``group[key]`` when it is a dataset holding data, and how to name it in a sentence."""
    import h5py

    what = where(group, key)
    if key not in group:
        raise ModelFileError(f"{path}: {where(group)} has no {key}")
    ds = group[key]
    if not isinstance(ds, h5py.Dataset):
        raise ModelFileError(f"{path}: {what} is a group, expected a dataset")
    if ds.shape is None:  # HDF5's null dataspace
        raise ModelFileError(f"{path}: {what} is empty (no data)")
    return ds, what


def float_dataset(group, key: str, path: str, shape: tuple[int, ...] | None = None, *,
                  ndim: int | None = None) -> np.ndarray:
    """A float dataset of ``group``: present, a dataset, of float dtype, of ``shape`` (or of
    ``ndim`` dimensions; checked before any data is read), and finite."""
    ds, what = _dataset(group, key, path)
    if ds.dtype.kind != "f":
        raise ModelFileError(f"{path}: {what} has dtype {ds.dtype}, expected float")
    if shape is not None and tuple(ds.shape) != tuple(shape):
        raise ModelFileError(f"{path}: {what} has shape {tuple(ds.shape)}, expected "
                             f"{tuple(shape)}")
    if ndim is not None and (len(ds.shape) != ndim or 0 in ds.shape):
        raise ModelFileError(f"{path}: {what} has shape {tuple(ds.shape)}, expected {ndim} "
                             "non-empty dimensions")
    _fits_the_file(ds, what, path)
    arr = np.asarray(ds[()])
    if not np.all(np.isfinite(arr)):
        raise ModelFileError(f"{path}: {what} holds NaN or infinite values")
    if arr.size and np.max(np.abs(arr)) > MAX_MAGNITUDE:
        raise ModelFileError(f"{path}: {what} holds values as large as "
                             f"{float(np.max(np.abs(arr))):.3g}, beyond any trained network "
                             f"(at most {MAX_MAGNITUDE:.0e})")
    return arr


def int_dataset(group, key: str, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """An integer dataset of ``group`` of ``shape``, its values within int32."""
    ds, what = _dataset(group, key, path)
    if ds.dtype.kind not in "iu":
        raise ModelFileError(f"{path}: {what} has dtype {ds.dtype}, expected integers")
    if tuple(ds.shape) != tuple(shape):
        raise ModelFileError(f"{path}: {what} has shape {tuple(ds.shape)}, expected "
                             f"{tuple(shape)}")
    return np.asarray(ds[()])


def _fits_the_file(ds, what: str, path: str) -> None:
    """An uncompressed dataset cannot hold more bytes than the file: a larger shape is damage
    (and reading it would try to allocate them)."""
    if ds.compression is None and ds.size * ds.dtype.itemsize > os.path.getsize(path):
        raise ModelFileError(f"{path}: {what} claims shape {tuple(ds.shape)}, more data than "
                             "the file holds")


def _range(low: int, high: int) -> str:
    return f"an integer from {low} to {high}" if low != high else f"{low}"


def _shown(value) -> str:
    if value is None or type(value).__name__ == "Empty":  # JSON null, HDF5's null dataspace
        return "empty (null)"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    shown = repr(value.item() if isinstance(value, np.generic) else value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# --------------------------------------------------------------------------------------------------
# JSON attributes (config, provenance) and their fields
# --------------------------------------------------------------------------------------------------


def json_object(value, what: str, path: str) -> dict:
    """An attribute holding a JSON object (the configuration, the provenance)."""
    import json

    s = text(value, what, path)
    try:
        obj = json.loads(s)
    except ValueError:
        raise ModelFileError(f"{path}: {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: {what} is {type(obj).__name__} JSON, expected an object")
    return obj


def int_field(low: int, high: int, optional: bool = False):
    def check(v, what, path):
        return None if v is None and optional else integer(v, what, path, low, high)
    return check


def number_field(low: float | None = None, low_open: bool = False, optional: bool = False):
    def check(v, what, path):
        return None if v is None and optional else number(v, what, path, low=low,
                                                          low_open=low_open)
    return check


def flag_field(v, what, path):
    if not isinstance(v, bool):
        raise ModelFileError(f"{path}: {what} is {_shown(v)}, expected true or false")
    return v


def text_field(v, what, path):
    if not isinstance(v, str):
        raise ModelFileError(f"{path}: {what} is {_shown(v)}, expected text")
    return v


def list_field(item, low: int, high: int):
    """A JSON list of ``low`` to ``high`` entries, each checked by ``item``."""
    def check(v, what, path):
        if not isinstance(v, list):
            raise ModelFileError(f"{path}: {what} is {_shown(v)}, expected a list")
        if not low <= len(v) <= high:
            raise ModelFileError(f"{path}: {what} has {len(v)} entries, expected "
                                 f"{low} to {high}")
        return [item(x, f"{what}[{i}]", path) for i, x in enumerate(v)]
    return check


def check_fields(d: dict, checks: dict, path: str) -> dict:
    """``d`` (a configuration read from JSON) with every known field checked by its entry in
    ``checks``; unknown fields are left for the configuration class to name."""
    return {k: checks[k](v, f"configuration field {k}", path) if k in checks else v
            for k, v in d.items()}
