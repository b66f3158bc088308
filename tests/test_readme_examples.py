"""The README's `eventformer infer` and `eventformer convert` examples on files run as printed.

Every such command line in the README's ``bash`` blocks is taken as written, its placeholder file
names (``recording.bs2``, ``a.bs2 b.npy``, ``recording.raw``...) standing for real recordings of
the same format in ``../shared/data/events`` (see `STAND_INS`), and run through the CLI in an empty
folder: each must exit 0. A line naming a file no stand-in covers (a model the user exports
first, a live stream), or reading a dataset, is not a file example and is left out; the test
insists that the ones a new user meets first are among those run. Skipped, with the reason, when
``../shared`` is absent.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT, SHARED
from eventformer_cli.main import app
from typer.testing import CliRunner

from eventformer.weights import shipped_model_path

EVENTS = SHARED / "data" / "events"
GESTURE = EVENTS / "dvs-gesture"
FORMATS = EVENTS / "formats"

#: README placeholder -> the real file it stands for (same format as its name says).
STAND_INS = {
    "recording.bs2": GESTURE / "2.bs2",
    "2.bs2": GESTURE / "2.bs2",
    "a.bs2": GESTURE / "1.bs2",
    "b.npy": FORMATS / "evt3_sample.npy",
    "recording.raw": FORMATS / "evt2_sample.raw",
}
#: Models a README example names that stand for a model the user brings: the shipped default.
MODEL_STAND_INS = {"spikformer-dvs.h5"}
#: File names an example writes (its outputs), created in the test's folder.
OUTPUTS = {"out.npy", "out.h5", "figs/"}
#: What a user tries first: the file examples of "Classify recordings" and "Event files".
MUST_RUN = {
    "eventformer infer recording.bs2 --weights spikformer-dvs.h5",
    "eventformer infer a.bs2 b.npy --weights spikformer-dvs.h5 --json",
    "eventformer convert recording.raw out.npy",
    "eventformer convert recording.raw out.h5 --start 1320000 --end 1350000 --center-crop --size 128",
}

_FILE_LIKE = re.compile(r"\.(bs2|bin|npy|npz|raw|dat|aedat4?|h5|hdf5|nir|pth)$|/$")


def readme_commands() -> list[str]:
    """`eventformer infer` / `convert` lines of the README's bash blocks, comments cut off."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if re.match(r"eventformer (infer|convert) ", line):
                commands.append(line)
    return commands


def runnable(command: str) -> list[str] | None:
    """The CLI arguments for ``command`` with stand-ins substituted, or None when it is not a
    file example (a dataset, optional-argument syntax, or a file no stand-in covers)."""
    if "--dataset" in command or "[" in command:
        return None
    args = shlex.split(command)[1:]
    out = []
    for arg in args:
        if arg in STAND_INS:
            out.append(str(STAND_INS[arg]))
        elif arg in MODEL_STAND_INS:
            out.append(str(shipped_model_path("ssa")))
        elif _FILE_LIKE.search(arg) and arg not in OUTPUTS:
            return None
        else:
            out.append(arg)
    return out


def test_the_readme_lists_the_examples_a_new_user_meets_first() -> None:
    found = set(readme_commands())
    assert MUST_RUN <= found, f"README examples changed; missing {sorted(MUST_RUN - found)}"
    assert all(runnable(command) is not None for command in MUST_RUN)


@pytest.mark.skipif(not GESTURE.is_dir() or not FORMATS.is_dir(),
                    reason="../shared/data/events is absent (a user's clone): no real recordings")
@pytest.mark.parametrize("command", [c for c in readme_commands() if runnable(c) is not None])
def test_readme_example_runs_as_printed(command: str, tmp_path: Path, monkeypatch) -> None:
    if "--plot" in command:
        pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, runnable(command))
    assert result.exit_code == 0, f"{command}\n{result.output}"
    assert "error:" not in result.stderr
    if "convert" in command:
        out = next(arg for arg in shlex.split(command) if arg in OUTPUTS)
        assert (tmp_path / out).stat().st_size > 0
