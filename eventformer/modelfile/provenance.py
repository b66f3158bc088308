"""A model file's provenance: kept free of the writing machine's paths, and told in short rows.

The provenance (JSON) says where a model came from: the checkpoint or graph, the training data
and command, the training history. Model files travel (the shipped ones are in the package), so
absolute paths of the machine that wrote them mean nothing elsewhere and say too much about it:
:func:`portable` keeps only their last component (a file or folder name). :func:`summary_rows`
gives ``inspect`` a short key/value view; ``--json`` keeps the whole record.
"""

from __future__ import annotations

import re

# An absolute path inside a string: POSIX (/a/b), home (~/a), or Windows (C:\a, C:/a, \\host\a).
# It starts the string or follows a space, "=", a quote or "(": so "x // f", "a/b" (relative) and
# URLs ("https://...") are left alone.
_ABSOLUTE = re.compile(r"""(?:^|(?<=[\s='"(]))"""
                       r"""(?:[A-Za-z]:[\\/]|\\\\|~[\\/]|/(?=[^\s/]))[^\s'"()]*""")


def _last_component(match: re.Match) -> str:
    parts = [p for p in re.split(r"[\\/]", match.group(0)) if p]
    return parts[-1] if parts else ""


def portable(value):
    """``value`` (a provenance record: dicts, lists, strings, numbers) with every absolute path in
    its strings cut to its last component, ``/root/.cache/x/data-v1`` -> ``data-v1``, in a
    command line too (``-o /tmp/run/m.h5`` -> ``-o m.h5``). Keys and other values are kept."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return _ABSOLUTE.sub(_last_component, value)
    return value


def absolute_paths(value) -> list[str]:
    """The absolute paths found in ``value``'s strings (what :func:`portable` would cut)."""
    found: list[str] = []
    if isinstance(value, dict):
        for v in value.values():
            found += absolute_paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found += absolute_paths(v)
    elif isinstance(value, str):
        found += [m.group(0) for m in _ABSOLUTE.finditer(value)]
    return found


def summary_rows(provenance: dict, width: int = 72) -> list[tuple[str, str]]:
    """(key, value) rows for people: top-level entries, and one level into nested records
    (``training.epochs``); deeper records as their first fields (``name=AdamW, lr=0.003, ...``
    with how many more), lists as their length and what an entry holds."""
    rows: list[tuple[str, str]] = []
    for key, value in provenance.items():
        if isinstance(value, dict) and value:
            for sub, v in value.items():
                rows.append((f"{key}.{sub}", _brief(v, width)))
        else:
            rows.append((str(key), _brief(value, width)))
    return rows


def _scalar(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _brief(value, width: int) -> str:
    """One line for a value: scalars as they are, records and lists summarised (never cut in
    the middle of a value: what does not fit is counted)."""
    if isinstance(value, dict):
        if not value:
            return "(empty)"
        shown, used = [], 0
        items = list(value.items())
        for k, v in items:
            part = f"{k}={_scalar(v) if not isinstance(v, (dict, list)) else _brief(v, width)}"
            if shown and used + len(part) + 2 > width:
                break
            shown.append(part)
            used += len(part) + 2
        rest = len(items) - len(shown)
        return ", ".join(shown) + (f", ... ({rest} more)" if rest else "")
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(not isinstance(v, (dict, list)) for v in value):
            joined = ", ".join(_scalar(v) for v in value)
            if len(joined) <= width:
                return f"[{joined}]"
            return f"{len(value)} entries"
        if all(isinstance(v, dict) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            fields = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
            return f"{len(value)} entries ({fields})"
        return f"{len(value)} entries"
    return _scalar(value)
