"""Docs that cannot drift: every `deit-pipe …` command line in README.md and docs/*.md parses
with the real click group (its subcommand and every flag exist), and DESIGN.md's layout
block draws the package's folder tree as it is: every module, and nothing else."""

import re
import shlex
from pathlib import Path

import click

from deit_pipe.cli import main

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(text: str) -> list[str]:
    """The `deit-pipe …` commands of a Markdown text: in code blocks (continuation lines
    joined, comments and pipes cut) and in inline code spans."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            for part in re.split(r"\|\||&&|[|;]", line):
                if "deit-pipe " in part:
                    found.append(part[part.index("deit-pipe ") :].strip())
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m.strip() for m in re.findall(r"`(deit-pipe [^`]+)`", outside)]
    return found


def command_problems(line: str) -> list[str]:
    """What in one command line the CLI does not have: an unknown subcommand or flag."""
    try:
        tokens = shlex.split(line)
    except ValueError:  # an unbalanced quote in prose: split on blanks
        tokens = line.split()
    if len(tokens) < 2 or tokens[1].startswith("-") or not re.fullmatch(r"[a-z-]+", tokens[1]):
        return []  # `deit-pipe --help`, `deit-pipe COMMAND`
    command = main.commands.get(tokens[1])
    if command is None:
        return [f"{line}: no subcommand {tokens[1]!r}"]
    flags = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            flags.update(param.opts, param.secondary_opts)
    problems = []
    for token in tokens[2:]:
        flag = token.split("=", 1)[0].strip("[](),.;:'\"`…")
        if flag.startswith("--") and len(flag) > 2 and flag not in flags:
            problems.append(f"{line}: {tokens[1]} has no flag {flag}")
    return problems


def test_every_documented_command_line_parses_with_the_real_cli():
    lines = [(doc.name, line) for doc in DOCS for line in command_lines(doc.read_text())]
    assert len(lines) > 30  # the tour, the cluster recipes, the reference
    problems = [f"{name}: {p}" for name, line in lines for p in command_problems(line)]
    assert not problems, "\n".join(problems)


def test_the_doc_check_catches_a_planted_wrong_flag():
    planted = "Run\n```\ndeit-pipe train --store s.zarr \\\n    --no-such-flag 3\n```\n"
    assert command_problems(command_lines(planted)[0]) == [
        "deit-pipe train --store s.zarr      --no-such-flag 3: train has no flag --no-such-flag"
    ]
    assert command_problems("deit-pipe precompute --workers 2")  # an old spelling, in docs
    assert command_problems("deit-pipe trian --out x")  # a subcommand that does not exist
    assert not command_problems("deit-pipe precompute --dask-workers=2 [--dry-run]")


def layout_paths(text: str) -> set[str]:
    """The package paths DESIGN.md's layout block draws: folders as `name/` lines, and the
    modules on a line belonging to the deepest folder drawn left of them."""
    layout = re.search(r"## Layout[^\n]*\n```\n(.*?)```", text, flags=re.S).group(1)
    folders: list[tuple[int, str]] = []  # (indent, path) of the folders above this line
    found = set()
    for line in layout.splitlines()[1:]:  # the first line is the package itself
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent == 0:  # past the package: csrc/, tests/, …
            break
        first = line.split()[0] if line.strip() else ""
        folders = [(i, f) for i, f in folders if i < indent]
        base = folders[-1][1] if folders else ""
        if re.fullmatch(r"\w+/", first):
            folders.append((indent, base + first))
            found.add(base + first)
            base += first  # modules after a folder on its own line are its own
        for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", line):
            if name != "__init__.py":
                found.add(base + name)
    return found


def package_paths() -> set[str]:
    package = ROOT / "deit_pipe"
    paths = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    folders = {
        f"{d.relative_to(package)}/"
        for d in package.rglob("*")
        if d.is_dir() and (d / "__init__.py").exists()
    }
    return paths | folders


def test_design_layout_and_the_folder_tree_agree():
    drawn = layout_paths((ROOT / "docs" / "DESIGN.md").read_text())
    actual = package_paths()
    missing = sorted(actual - drawn)
    assert not missing, f"DESIGN.md's layout block does not draw: {', '.join(missing)}"
    invented = sorted(drawn - actual)
    assert not invented, f"DESIGN.md's layout block draws what does not exist: {invented}"


def test_the_layout_check_catches_a_planted_module():
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    planted = text.replace("      epoch.py ", "      epoch.py  ghost.py ", 1)
    assert planted != text
    assert "data/plan/ghost.py" in layout_paths(planted) - package_paths()
