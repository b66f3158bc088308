"""Tables that fit the terminal: the columns are chosen for the width, and no number or name is
ever cut.

rich shrinks a table that is too wide for the console by cutting its cells to ``…``, which is
how ``16,384`` became ``16,…`` and five attention layers all became ``block.0.attn…``. A
:class:`FitTable` instead measures its cells and decides itself what to show, so rich never has to
shrink anything:

- when every column fits the width, the whole table is printed;
- otherwise (the default) the essential columns are printed, then as many of the others as fit,
  in the order of their priority, and a line under the table names the ones left out;
- with ``wide=True`` every column is printed, and columns that do not fit beside each other
  continue in a second table below the first (the key column, e.g. the layer, repeated in each).

Column headers may wrap onto two lines at their spaces; cells never wrap. Only a single cell
wider than the whole console (a very long file name) is folded onto several lines, whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: What a column costs beyond its text in rich's default box: a space of padding on each side and
#: the rule to its right; the table's left edge adds one more.
_COLUMN_COST = 3
_EDGE = 1

#: The commands' ``--wide`` option, and the hint under a table whose columns were left out.
WIDE_HELP = ("Print every column of the tables; columns that do not fit the terminal's width "
             "continue in a second table below (by default the columns that fit are shown and "
             "the others named).")
WIDE_HINT = "--wide shows them"


@dataclass
class _Column:
    header: str
    left: bool
    key: bool
    essential: bool
    priority: int
    cells: list[str] = field(default_factory=list)

    def needed(self) -> int:
        """The narrowest this column can be: its widest cell, or its header's longest word."""
        return max([cell_len(c) for c in self.cells]
                   + [cell_len(w) for w in self.header.split()] + [1])

    def wanted(self) -> int:
        """The width that keeps the header on one line."""
        return max(self.needed(), cell_len(self.header))


@dataclass
class Layout:
    """Which columns a table shows at a width: ``groups`` of column indices, one rich table each
    (more than one only when columns continue below), and the ``hidden`` ones."""

    groups: list[list[int]]
    hidden: list[int]


class FitTable:
    """A table of text cells whose columns are chosen for the console's width.

    ``key`` columns identify a row (shown in every group); ``essential`` ones are shown at every
    width; the others are shown when they fit, lower ``priority`` numbers first (default: the
    order they were added in). Cells are plain text (no rich markup is read from them)."""

    def __init__(self, title: str, caption: str = "", *, more_hint: str = ""):
        self.title = title
        self.caption = caption
        #: What to tell a reader when columns are left out, e.g. "--wide shows them".
        self.more_hint = more_hint
        self.columns: list[_Column] = []

    def add_column(self, header: str, *, left: bool = False, key: bool = False,
                   essential: bool = False, priority: int | None = None) -> None:
        self.columns.append(_Column(header, left, key, essential or key,
                                    len(self.columns) if priority is None else priority))

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        for column, cell in zip(self.columns, cells):
            column.cells.append(str(cell))

    # --- choosing the columns -----------------------------------------------------------------

    def _width(self, indices) -> int:
        return sum(self.columns[i].needed() + _COLUMN_COST for i in indices) + _EDGE

    def _pack(self, indices: list[int], width: int) -> list[list[int]]:
        """``indices`` (in table order) into groups that each fit ``width``, every group led by
        the key columns; a column too wide even beside the keys alone gets a group of its own."""
        keys = [i for i, c in enumerate(self.columns) if c.key]
        groups: list[list[int]] = []
        current = list(keys)
        for i in indices:
            if i in keys:
                continue
            if len(current) > len(keys) and self._width(current + [i]) > width:
                groups.append(current)
                current = list(keys)
            current.append(i)
        groups.append(current)
        return groups

    def layout(self, width: int, wide: bool = False) -> Layout:
        everything = list(range(len(self.columns)))
        if wide or self._width(everything) <= width:
            return Layout(self._pack(everything, width), [])
        shown = [i for i, c in enumerate(self.columns) if c.essential]
        optional = sorted((i for i, c in enumerate(self.columns) if not c.essential),
                          key=lambda i: self.columns[i].priority)
        for i in optional:
            if self._width(shown + [i]) <= width:
                shown.append(i)
        shown.sort()
        return Layout(self._pack(shown, width), [i for i in everything if i not in shown])

    # --- drawing ------------------------------------------------------------------------------

    def tables(self, width: int, wide: bool = False) -> list[Table]:
        """The rich tables to print, one per group, each at most ``width`` wide."""
        plan = self.layout(width, wide)
        caption = self.caption
        if plan.hidden:
            left_out = ", ".join(self.columns[i].header for i in plan.hidden)
            note = f"not shown at {width} columns: {left_out}"
            if self.more_hint:
                note += f" ({self.more_hint})"
            caption = f"{caption}\n{note}" if caption else note
        out = []
        for n, group in enumerate(plan.groups):
            title = self.title if n == 0 else f"{self.title} (continued)"
            last = n == len(plan.groups) - 1
            table = Table(title=Text(title) if title else None, title_justify="left",
                          caption=Text(caption) if caption and last else None,
                          caption_justify="left")
            widths = self._widths(group, width)
            for i, w in zip(group, widths):
                c = self.columns[i]
                table.add_column(Text(c.header), justify="left" if c.left else "right",
                                 width=w, overflow="fold")
            for r in range(len(self.columns[0].cells) if self.columns else 0):
                table.add_row(*(Text(self.columns[i].cells[r]) for i in group))
            out.append(table)
        return out

    def _widths(self, group: list[int], width: int) -> list[int]:
        """Each column's needed width, then the room left given to headers that would otherwise
        wrap, in table order; a group wider than the console (one huge cell) gives the excess
        back from its widest column, which rich then folds."""
        widths = [self.columns[i].needed() for i in group]
        spare = width - self._width(group)
        for k, i in enumerate(group):
            grow = min(max(spare, 0), self.columns[i].wanted() - widths[k])
            widths[k] += grow
            spare -= grow
        if spare < 0:
            widest = max(range(len(widths)), key=widths.__getitem__)
            widths[widest] = max(1, widths[widest] + spare)
        return widths

    def print(self, console: Console, wide: bool = False) -> None:
        for table in self.tables(console.width, wide):
            console.print(table)
