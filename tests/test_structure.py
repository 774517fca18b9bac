"""The code's shape (issue 45): short functions, small classes, one place for each rule.

Pure `ast` and text over `deit_pipe/`: nothing is imported, so this runs in well under a
second. Every assertion names its offenders (file:line name).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deit_pipe"
MAX_FUNCTION_LINES = 60  # def line to last line, decorators excluded
MAX_CLASS_METHODS = 15  # functions in the class body, properties included


@cache
def _modules() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(), filename=str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def _is_click_option(node: ast.AST) -> bool:
    """`click.option(…)`: a line of a CLI's option list."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "option"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "click"
    )


def _lines_beyond_options(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The function's lines (def line to last line) not inside a `click.option(…)` call: an
    option list (`_train_options`, `recipe_options`) is as long as the CLI has flags, and
    splitting it would only scatter them."""
    lines = set(range(fn.lineno, fn.end_lineno + 1))
    for node in ast.walk(fn):
        if _is_click_option(node):
            lines -= set(range(node.lineno, node.end_lineno + 1))
    return len(lines)


def test_no_function_is_over_60_lines_beyond_click_option_lists():
    too_long = [
        f"{_where(path, fn)} {fn.name}: {length} lines"
        for path, tree in _modules().items()
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := _lines_beyond_options(fn)) > MAX_FUNCTION_LINES
    ]
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (click.option calls not counted); split "
        "them into named steps: " + "; ".join(too_long)
    )


def test_the_option_list_exemption_lets_through_option_lists_only():
    """A function over the limit that passes it only by its `click.option` calls must be
    mostly those calls (two thirds of its lines at least): an option list, not a long
    function holding one big call."""
    loose = [
        f"{_where(path, fn)} {fn.name}: {beyond} of {length} lines are not click options"
        for path, tree in _modules().items()
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(_is_click_option(node) for node in ast.walk(fn))
        and (length := fn.end_lineno - fn.lineno + 1) > MAX_FUNCTION_LINES
        and 3 * (beyond := _lines_beyond_options(fn)) > length
    ]
    assert not loose, "long functions that are not option lists: " + "; ".join(loose)


def test_no_class_has_over_15_methods():
    crowded = [
        f"{_where(path, cls)} {cls.name}: {count} methods"
        for path, tree in _modules().items()
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef)
        and (
            count := sum(
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in cls.body
            )
        )
        > MAX_CLASS_METHODS
    ]
    assert not crowded, (
        f"classes with over {MAX_CLASS_METHODS} methods; move helpers that need little state "
        "to functions or a helper class: " + "; ".join(crowded)
    )


def test_one_site_tells_a_device_batch_from_a_host_one():
    sites = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in _modules()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if '"device_views" in' in line
    ]
    assert len(sites) <= 1, f'`"device_views" in` tested at {len(sites)} sites: {sites}'


def _hashes_views(tree: ast.Module) -> bool:
    """Whether a module uses xxhash, the view fingerprint's hash (docs/DESIGN.md: the 64-bit
    xxh3 of a view's uint8 bytes and its finishing parameters); docstrings do not count."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "xxhash" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xxhash":
            return True
        if isinstance(node, ast.Attribute) and node.attr.startswith(("xxh3", "xxh64", "xxh32")):
            return True
    return False


def test_view_fingerprints_are_hashed_in_one_module():
    """Host views, device views and verify all take their fingerprints from one function:
    two copies of the hash could drift apart and every replayed view would be refused."""
    hashing = [
        path.relative_to(PACKAGE.parent) for path, tree in _modules().items() if _hashes_views(tree)
    ]
    defining = [
        path.relative_to(PACKAGE.parent)
        for path, tree in _modules().items()
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "view_fingerprint"
            for node in tree.body
        )
    ]
    assert len(hashing) == 1, (
        f"view fingerprints hashed (xxhash) in {len(hashing)} modules: {hashing}"
    )
    assert len(defining) == 1, f"`view_fingerprint` defined in {len(defining)} modules: {defining}"
    assert hashing == defining, (
        f"the hash ({hashing}) and `view_fingerprint` ({defining}) live in different modules"
    )
