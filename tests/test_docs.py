"""Docs that cannot drift. README.md and docs/DESIGN.md are checked against what they name:
every `deit-pipe …` command line parses with the real click group; every module path, `make`
target, command flag and (in DESIGN) test function they name exists; every figure README
quotes from BENCHMARKS.md is the one BENCHMARKS.md (or its JSON) has; and DESIGN.md's layout
block draws the package's folder tree as it is: every module, and nothing else.

Each check is a function of the text, so the tests below also run it on planted copies to
show that it can fail."""

import json
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import click

from deit_pipe.cli import RENAMED, main

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DESIGN = ROOT / "docs" / "DESIGN.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
REPLAY = ROOT / "benchmarks" / "replay.json"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
CHECKED = [README, DESIGN]  # the texts the name and figure checks below read


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def code_spans(text: str) -> list[str]:
    """The inline code spans outside code blocks (a span may wrap onto a second line)."""
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", outside)


# -- command lines ------------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """The `deit-pipe …` commands of a Markdown text: in code blocks (continuation lines
    joined, comments and pipes cut) and in inline code spans."""
    found = []
    for block in fenced_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            for part in re.split(r"\|\||&&|[|;]", line):
                if "deit-pipe " in part:
                    found.append(part[part.index("deit-pipe ") :].strip())
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m.strip() for m in re.findall(r"`(deit-pipe [^`]+)`", outside)]
    return found


def command_flags(name: str, old: bool = False) -> set[str]:
    """The flags of `deit-pipe NAME`, with the old spellings of `cli.RENAMED` when `old`."""
    flags = {"--help", "-h"}
    for param in main.commands[name].params:
        if isinstance(param, click.Option):
            flags.update(param.opts, param.secondary_opts)
    return flags | set(RENAMED.get(name, {})) if old else flags


def flag_of(token: str) -> str:
    return token.split("=", 1)[0].strip("[](),.;:'\"`…")


def command_problems(line: str) -> list[str]:
    """What in one command line the CLI does not have: an unknown subcommand or flag. A
    full command line in the docs uses today's spellings (no `cli.RENAMED` old ones)."""
    try:
        tokens = shlex.split(line)
    except ValueError:  # an unbalanced quote in prose: split on blanks
        tokens = line.split()
    if len(tokens) < 2 or tokens[1].startswith("-") or not re.fullmatch(r"[a-z-]+", tokens[1]):
        return []  # `deit-pipe --help`, `deit-pipe COMMAND`
    if tokens[1] not in main.commands:
        return [f"{line}: no subcommand {tokens[1]!r}"]
    flags = command_flags(tokens[1])
    problems = []
    for token in tokens[2:]:
        flag = flag_of(token)
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


# -- flags named in prose -----------------------------------------------------------------

# Flags the docs name that belong to other programs, each with the program it belongs to.
FOREIGN_FLAGS = {
    "--finetune": "DeiT's main.py",
    "--resources": "dask worker",
    "--logdir": "tensorboard",
    "--nnodes": "torchrun",
}
GROUP_FLAGS = {"--help", "-h", "--version"}


def flag_problems(text: str) -> list[str]:
    """Flags a text names that the CLI does not have. In a code span that starts with a
    subcommand (`train --follow`, `scan --data-cache DIR`) or follows one ("precompute's
    `--compile`"), the flag must be that command's (an old spelling of `cli.RENAMED`
    counts); any other `--flag` in a span must be some command's, or another program's
    (`FOREIGN_FLAGS`). Full `deit-pipe …` lines are `command_problems`'s."""
    everyone = set().union(*(command_flags(n, old=True) for n in main.commands))
    known = everyone | GROUP_FLAGS | set(FOREIGN_FLAGS)
    problems = []
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    owned = [
        (m.group(1), m.group(2))
        for m in re.finditer(r"\b([a-z]+)'s `(--[a-z0-9-]+)", outside)
        if m.group(1) in main.commands
    ]
    for span in code_spans(text):
        words = span.split()
        if words and words[0] == "deit-pipe":
            continue
        flags = [flag_of(w) for w in words if flag_of(w).startswith("--")]
        if words and words[0] in main.commands:
            owned += [(words[0], f) for f in flags]
        else:
            problems += [f"`{span}`: no command has {f}" for f in flags if f not in known]
    for command, flag in owned:
        if flag not in command_flags(command, old=True):
            problems.append(f"{command} has no flag {flag}")
    return problems


def test_every_flag_the_docs_name_exists_on_its_command():
    problems = [f"{doc.name}: {p}" for doc in CHECKED for p in flag_problems(doc.read_text())]
    assert not problems, "\n".join(problems)


def test_the_flag_check_catches_a_flag_on_the_wrong_command():
    assert flag_problems("`train --follow` and precompute's `--compile`") == []
    assert flag_problems("use `verify --follow`") == ["verify has no flag --follow"]
    assert flag_problems("precompute's `--follow`") == ["precompute has no flag --follow"]
    assert flag_problems("`--no-such-flag 3`") == [
        "`--no-such-flag 3`: no command has --no-such-flag"
    ]
    assert flag_problems("`scan --workers 4`") == []  # an old spelling of --threads


# -- module paths, make targets, test names -----------------------------------------------

SKIP_DIRS = {".git", ".venv", "build", "runs", "node_modules", "__pycache__"}


def repo_files() -> set[str]:
    """Every file of the working tree (relative paths), build outputs and the venv aside."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        rel = Path(folder).relative_to(ROOT)
        found.update(str(rel / f) if str(rel) != "." else f for f in files)
    return found


def path_problems(text: str, files: set[str]) -> list[str]:
    """Module paths (`data/device/render.py`, `csrc/jpeg_blocks.c`, `benchmarks/x.py`) a
    text names that are no file of the repository. A path may be named from the package
    (`storage/io.py`) or from any folder above it (`kernels/resample.py`)."""
    named = set(re.findall(r"(?<![\w./-])((?:[\w.-]+/)+[\w-]+\.(?:py|c|h))\b", text))
    return sorted(
        f"no such file: {p}"
        for p in named
        if p not in files and not any(f.endswith("/" + p) for f in files)
    )


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"([\w.-]+(?:[ \t]+[\w.-]+)*)[ \t]*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def make_problems(text: str, targets: set[str]) -> list[str]:
    """`make TARGET`s a text names (in code) that the Makefile does not have."""
    code = code_spans(text) + fenced_blocks(text)
    named = {t for part in code for t in re.findall(r"\bmake\s+([a-z][\w-]*)", part)}
    return sorted(f"the Makefile has no target {t!r}" for t in named - targets)


def defined_tests() -> set[str]:
    return {
        name
        for path in (ROOT / "tests").rglob("*.py")
        for name in re.findall(r"^\s*def (test_\w+)", path.read_text(), flags=re.M)
    }


def unknown_test_problems(text: str, tests: set[str]) -> list[str]:
    """Test functions a text names (`test_…` in backticks) that no test file defines."""
    named = set(re.findall(r"`(test_\w+)`", text))
    return sorted(f"no test function {t}" for t in named - tests)


def test_every_module_path_make_target_and_test_the_docs_name_exists():
    files, targets, tests = repo_files(), make_targets(), defined_tests()
    problems = []
    for doc in CHECKED:
        text = doc.read_text()
        found = path_problems(text, files) + make_problems(text, targets)
        problems += [f"{doc.name}: {p}" for p in found + unknown_test_problems(text, tests)]
    assert not problems, "\n".join(problems)
    design = DESIGN.read_text()
    assert len(set(re.findall(r"`(test_\w+)`", design))) >= 30  # DESIGN's guarantees


def test_the_name_checks_catch_planted_names():
    files, targets, tests = repo_files(), make_targets(), defined_tests()
    assert path_problems("`data/device/render.py`, `kernels/resample.py`", files) == []
    assert path_problems("see `data/device/ghost.py`", files) == [
        "no such file: data/device/ghost.py"
    ]
    assert make_problems("`make bench-render`, `make\ntable4`", targets) == []
    assert make_problems("run `make bench-ghost`", targets) == [
        "the Makefile has no target 'bench-ghost'"
    ]
    assert unknown_test_problems("`test_plan_is_pure_and_epochs_differ`", tests) == []
    assert unknown_test_problems("`test_no_such_guarantee`", tests) == [
        "no test function test_no_such_guarantee"
    ]


# -- README's figures against BENCHMARKS.md -----------------------------------------------

Source = Callable[[str, dict], float]  # (BENCHMARKS.md's text, replay.json) → a figure
N = r"(\d[\d,]*(?:\.\d+)?)"  # a figure: 14.2, 4,600 (no sentence's full stop)


def section(bench: str, heading: str) -> str:
    """The `## ` section of BENCHMARKS.md whose heading contains `heading`."""
    m = re.search(rf"^## [^\n]*{re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", bench, re.M | re.S)
    assert m, f"BENCHMARKS.md has no section {heading!r}"
    return m.group(1)


def bench(pattern: str, heading: str | None = None) -> Source:
    """The first number `pattern` captures in BENCHMARKS.md (in one section, if named)."""

    def get(text: str, replay: dict) -> float:
        m = re.search(pattern, section(text, heading) if heading else text, re.S)
        assert m, f"BENCHMARKS.md has no {pattern!r}"
        return float(m.group(1).replace(",", ""))

    return get


def replay(row: str, stat: str = "top1") -> Source:
    """benchmarks/replay.json: a row's mean top-1 (%), its gap below online hard (points),
    or its stored bytes per training image."""

    def get(text: str, data: dict) -> float:
        def mean(name: str) -> float:
            values = data["rows"][name]["top1"]
            return 100 * sum(values) / len(values)

        if stat == "bytes":
            return data["rows"][row]["bytes_per_image"]
        return mean("online hard") - mean(row) if stat == "gap" else mean(row)

    return get


SCALE = "make bench-scale"
GPU = "make bench-gpu"
DEVICE = "The device renders"
# (what, a regex on README.md, where each of its groups comes from). README may round.
FIGURES: list[tuple[str, str, list[Source]]] = [
    (
        "offline vs online at 224² on the CPU",
        rf"DeiT-S⚗ training step is \*\*{N}× faster\*\* offline.*?DeiT-Ti⚗ step \*\*{N}×",
        [
            bench(rf"\| DeiT-S⚗ (?:\| [\d.]+ ){{3}}\| \*\*{N}×", SCALE),
            bench(rf"\| DeiT-Ti⚗ (?:\| [\d.]+ ){{3}}\| \*\*{N}×", SCALE),
        ],
    ),
    (
        "offline vs online on the H200",
        rf"offline steps are {N}× \(S\) and {N}× \(Ti\) faster",
        [
            bench(rf"\| DeiT-S⚗ (?:\| [\d.]+ ){{3}}\| \*\*{N}×", GPU),
            bench(rf"\| DeiT-Ti⚗ (?:\| [\d.]+ ){{3}}\| \*\*{N}×", GPU),
        ],
    ),
    (
        "P7",
        rf"a `--render host` view costs\s+{N}× of timm's loader's host time \(P7\)",
        [bench(rf"\*\*P7 = deit-pipe train replay ÷ timm prefetcher form = {N}\*\*")],
    ),
    (
        "P7-host",
        rf"\(P7-host\) fell\s+from {N}× to {N}×",
        [
            bench(rf"P7-host went {N} →"),
            bench(rf"\*\*P7-host\*\* \([^)]*\) = {N}", DEVICE),
        ],
    ),
    (
        "loader cores for DeiT-S⚗",
        rf"about {N} loader\s+cores would feed DeiT-S⚗'s {N} img/s.*?"
        rf"against {N} for timm's\s+loader",
        [
            bench(rf"\| --render device \(loader's share\) \| [\d.]+ \| {N} \|", DEVICE),
            bench(rf"Loader cores to feed DeiT-S⚗ at {N} img/s", DEVICE),
            bench(rf"\| timm \| [\d.]+ \| {N} \|", DEVICE),
        ],
    ),
    (
        "replay: E = T/3 against online",
        rf"\*\*E = T/3 = 20 stored epochs is\s+online's accuracy\*\* \({N} vs {N}%",
        [replay("hard E=20"), replay("online hard")],
    ),
    (
        "replay: bytes of E = 20",
        rf"and {N} bytes a training image; E = 6",
        [replay("hard E=20", "bytes")],
    ),
    (
        "replay: what fewer epochs cost",
        rf"E = 6 costs {N} points, E = 2 {N} and E = 1 {N},",
        [replay("hard E=6", "gap"), replay("hard E=2", "gap"), replay("hard E=1", "gap")],
    ),
    (
        "store bytes per view",
        rf"it costs {N} bytes per view; `--targets hard`.*?only the teacher's top-1\) {N}",
        [
            bench(rf"\| P4 \|[^|]*\|[^|]*\| \*\*{N}\*\*"),
            bench(rf"`--targets hard` \(top-1 class \+ fingerprint\), same logits: \*\*{N}"),
        ],
    ),
]


def same_figure(quoted: str, value: float) -> bool:
    """Whether README's `quoted` is `value` rounded to as many decimals as README gives."""
    quoted = quoted.replace(",", "")
    decimals = len(quoted.partition(".")[2])
    return abs(round(value, decimals) - float(quoted)) < 1e-9


def figure_problems(readme: str, bench_text: str, replay_data: dict) -> list[str]:
    """README's quoted figures that are not BENCHMARKS.md's (or that README no longer says
    in the words `FIGURES` looks for, so the table is kept with the text)."""
    problems = []
    for what, pattern, sources in FIGURES:
        m = re.search(pattern, readme, re.S)
        if not m:
            problems.append(f"{what}: README no longer says {pattern!r}")
            continue
        for quoted, source in zip(m.groups(), sources, strict=True):
            value = source(bench_text, replay_data)
            if not same_figure(quoted, value):
                problems.append(f"{what}: README says {quoted}, BENCHMARKS.md has {value:g}")
    return problems


def test_readmes_figures_are_benchmarks_figures():
    problems = figure_problems(
        README.read_text(), BENCHMARKS.read_text(), json.loads(REPLAY.read_text())
    )
    assert not problems, "\n".join(problems)


def test_the_figure_check_catches_a_planted_p7_host_figure():
    readme, benchmarks = README.read_text(), BENCHMARKS.read_text()
    measured = re.search(r"\*\*P7-host\*\*[^=]*= (\d\.\d+)", benchmarks).group(1)
    planted = readme.replace(f"to {measured}×", "to 0.19×", 1)
    assert planted != readme
    problems = figure_problems(planted, benchmarks, json.loads(REPLAY.read_text()))
    assert problems == [f"P7-host: README says 0.19, BENCHMARKS.md has {measured}"]


# -- DESIGN.md's layout block against the folder tree --------------------------------------


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


def layout_problems(text: str) -> list[str]:
    """Where a DESIGN text's layout block and the package's folder tree differ."""
    drawn, actual = layout_paths(text), package_paths()
    problems = [f"the layout block does not draw {p}" for p in sorted(actual - drawn)]
    return problems + [
        f"the layout block draws {p}, which does not exist" for p in sorted(drawn - actual)
    ]


def test_design_layout_and_the_folder_tree_agree():
    problems = layout_problems(DESIGN.read_text())
    assert not problems, "\n".join(problems)


def test_the_layout_check_catches_a_planted_module():
    text = DESIGN.read_text()
    planted = text.replace("      epoch.py ", "      epoch.py  ghost.py ", 1)
    assert planted != text
    assert layout_problems(planted) == [
        "the layout block draws data/plan/ghost.py, which does not exist"
    ]


def test_design_is_a_contract_a_newcomer_reads():
    """At most 450 lines, with a glossary: history and measurements live in BENCHMARKS.md."""
    text = DESIGN.read_text()
    assert len(text.splitlines()) <= 450
    assert "\n## Glossary\n" in text
