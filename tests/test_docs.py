"""Docs that cannot drift: every `deit-pipe …` command line in README.md and docs/*.md parses
with the real click group (its subcommand and every flag exist), and DESIGN.md's layout
block names every module of the package."""

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


def test_design_layout_names_every_module():
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    layout = re.search(r"## Layout[^\n]*\n```\n(.*?)```", text, flags=re.S).group(1)
    package = ROOT / "deit_pipe"
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and not re.search(rf"\b{re.escape(path.name)}", layout)
    ]
    missing += [
        f"{d.name}/"
        for d in sorted(package.iterdir())
        if d.is_dir() and (d / "__init__.py").exists() and f"{d.name}/" not in layout
    ]
    assert not missing, f"DESIGN.md's layout block does not name: {', '.join(missing)}"
