"""Every public kernel is documented (numpydoc sections naming each argument) and has a naive twin.

Two small static checks in the spirit of stumpy's: a kernel's docstring must carry a one-line
summary, a ``Parameters`` section with an entry (``name : shape/dtype``) for every argument of its
signature and nothing else, and a ``Returns`` section; and ``tests/kernel_twins.py``'s ``TWINS``
must name a twin for every public kernel, with a test in tests/test_kernels.py that calls the
kernel and that twin (directly or through a module-level helper such as ``_conv_setup``).
"""

import ast
import inspect
import re
from pathlib import Path

import kernel_twins
import pytest

import eventformer.kernels as kernels

TEST_KERNELS = Path(__file__).resolve().parent / "test_kernels.py"

PUBLIC = sorted(name for name in kernels.__all__
                if not inspect.ismodule(getattr(kernels, name)))


def _python_function(kernel):
    """The Python function behind a kernel (a Numba dispatcher, or the plain function itself
    with NUMBA_DISABLE_JIT=1 or for a helper such as lif_params)."""
    return getattr(kernel, "py_func", kernel)


def _sections(doc):
    """{section title: its lines} of a cleaned numpydoc docstring, plus "" for the text above the
    first section. A section is a title line followed by a line of dashes of the same length."""
    lines = doc.splitlines()
    sections = {"": []}
    current = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-+", nxt) and len(nxt) == len(line):
            current = line
            assert current not in sections, f"section {current!r} appears twice"
            sections[current] = []
            i += 2
            continue
        sections[current].append(line)
        i += 1
    return sections


def _entries(section_lines):
    """{name: type} of the entries of a Parameters/Returns section: the unindented lines
    ``name : type`` (``a, b : type`` documents both); indented lines are descriptions."""
    out = {}
    for line in section_lines:
        if not line.strip() or line.startswith(" "):
            continue
        names, sep, kind = line.partition(" : ")
        for name in names.split(","):
            out[name.strip()] = kind.strip() if sep else ""
    return out


@pytest.mark.parametrize("name", PUBLIC)
def test_kernel_docstring_has_numpydoc_sections(name):
    func = _python_function(getattr(kernels, name))
    doc = inspect.getdoc(func)
    assert doc, f"{name} has no docstring"
    lines = doc.splitlines()
    assert lines[0].strip(), f"{name}: the docstring must open with a one-line summary"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{name}: the summary must be one line, followed by a blank line")
    sections = _sections(doc)
    assert "Parameters" in sections, f"{name}: no 'Parameters' section"
    assert "Returns" in sections, f"{name}: no 'Returns' section"
    assert list(sections)[1:3] == ["Parameters", "Returns"], (
        f"{name}: sections must be Parameters then Returns, got {list(sections)[1:]}")

    params = _entries(sections["Parameters"])
    signature = list(inspect.signature(func).parameters)
    missing = [p for p in signature if p not in params]
    assert not missing, f"{name}: Parameters does not document {missing}"
    extra = [p for p in params if p not in signature]
    assert not extra, f"{name}: Parameters documents {extra}, which {name} does not take"
    untyped = [p for p in signature if not params[p]]
    assert not untyped, f"{name}: give shape and dtype (``name : type``) for {untyped}"

    returns = _entries(sections["Returns"])
    assert returns, f"{name}: the Returns section is empty (write ``None`` for none)"


# ---------------------------------------------------------------------------------------------
# naive twins
# ---------------------------------------------------------------------------------------------


def test_every_public_kernel_has_a_twin():
    assert set(kernel_twins.TWINS) == set(PUBLIC)
    for name, twins in kernel_twins.TWINS.items():
        assert isinstance(twins, tuple) and twins, f"{name}: TWINS values are non-empty tuples"
        for fn in twins:
            assert getattr(kernel_twins, fn.__name__, None) is fn, (
                f"{name}: {fn!r} is not a function of kernel_twins")


def _module_calls(tree):
    """Names a module's source imports from eventformer.kernels, the alias of kernel_twins, and
    for each module-level function the kernel names and twin names it calls, following calls
    into the module's other functions (helpers such as ``_conv_setup``)."""
    imported = set()
    alias = None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "eventformer.kernels":
            imported.update(a.asname or a.name for a in node.names)
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "kernel_twins":
                    alias = a.asname or a.name
    assert alias, "tests/test_kernels.py does not import kernel_twins"

    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    direct = {}
    for fname, fnode in funcs.items():
        plain, twins = set(), set()
        for node in ast.walk(fnode):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name):
                plain.add(f.id)
            elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                  and f.value.id == alias):
                twins.add(f.attr)
        direct[fname] = (plain, twins)

    def closure(fname, seen):
        plain, twins = set(direct[fname][0]), set(direct[fname][1])
        for callee in direct[fname][0]:
            if callee in funcs and callee not in seen:
                seen.add(callee)
                p, t = closure(callee, seen)
                plain |= p
                twins |= t
        return plain, twins

    calls = {f: closure(f, {f}) for f in funcs}
    return imported, calls


def test_every_kernel_is_compared_with_its_twins_in_a_test():
    tree = ast.parse(TEST_KERNELS.read_text(), filename=str(TEST_KERNELS))
    imported, calls = _module_calls(tree)
    tests = {f: c for f, c in calls.items() if f.startswith("test_")}
    problems = []
    for name, twins in sorted(kernel_twins.TWINS.items()):
        if name not in imported:
            problems.append(f"{name}: not imported from eventformer.kernels in test_kernels.py")
            continue
        callers = [t for t, (plain, _) in tests.items() if name in plain]
        if not callers:
            problems.append(f"{name}: no test calls it")
            continue
        for fn in twins:
            if not any(fn.__name__ in tests[t][1] for t in callers):
                problems.append(f"{name}: none of {callers} also calls twin {fn.__name__}")
    assert not problems, "\n".join(problems)
