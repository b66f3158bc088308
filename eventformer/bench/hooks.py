"""Timing an engine's methods from outside without changing what the engine does.

The bench's meters (:mod:`.accounting`, :mod:`.profile`) wrap methods of single layer objects.
An instance attribute would do that, but the engine may look at its objects' attributes to
choose a path (a layer runs step by step when a recorder has replaced its neurons' ``fire`` in
``vars(neurons)``), so a meter must not show up there: :func:`override` gives the one object a
subclass of its own class that holds the wrappers, and restores its class afterwards. Other
objects of the class, ``isinstance`` and ``vars`` are untouched.
"""

from __future__ import annotations

from typing import Callable


def override(obj, wrappers: dict[str, Callable]) -> Callable[[], None]:
    """Make ``obj.NAME(...)`` call ``wrappers[NAME](...)`` (which calls the original it took
    from ``getattr(obj, NAME)``, bound); returns the function that undoes it. A name that is an
    instance attribute of ``obj`` is replaced there instead (a class attribute would not be seen)."""
    cls = obj.__class__
    own = {name: fn for name, fn in wrappers.items() if name in vars(obj)}
    saved = {name: vars(obj)[name] for name in own}
    for name, fn in own.items():
        setattr(obj, name, fn)
    on_class = {name: staticmethod(fn) for name, fn in wrappers.items() if name not in own}
    if on_class:
        sub = type(cls.__name__, (cls,), on_class)
        sub.__module__, sub.__qualname__ = cls.__module__, cls.__qualname__
        obj.__class__ = sub

    def undo() -> None:
        if on_class:
            obj.__class__ = cls
        for name, fn in saved.items():
            setattr(obj, name, fn)

    return undo


class Meter:
    """What the meters share: the undo functions of their wrappers (``self._undo``), run by
    :meth:`close` or on leaving a ``with`` block."""

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
