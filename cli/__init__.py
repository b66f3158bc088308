"""The ``eventformer`` command line: thin typer commands over the library."""

import os

# Before Numba is imported (here, first in every CLI process, and so in the compile helper it
# starts): Numba marks up the message of every typing failure it meets while resolving
# overloads through colorama, thousands of them in a first run's compile, none ever shown by
# the CLI. Without the markup one process compiling the full-size model's kernels took a
# median 7.75 s of CPU instead of 8.3 s (five rounds each, interleaved). A user's own setting
# wins.
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
