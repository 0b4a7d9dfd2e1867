"""Every command in README.md, BENCHMARKS.md and docs/ works as written.

* Fenced shell blocks (``bash``, ``sh``, ``console``: there only the ``$ `` lines): each command must
  name what exists: ``python -m MODULE`` an importable module, ``python FILE`` / ``bash FILE`` a file
  of this repository, ``pip install -e ".[extras]"`` extras of ``pyproject.toml``, and every
  ``--option`` must be one the command accepts (the script's source, or ``pytest bench --help``).
* Fenced ``python`` blocks run, each page's blocks in order in one fresh interpreter (later blocks may
  use earlier blocks' names), in a scratch directory. A block after ``<!-- docs-test: slow -->`` is
  marked ``slow``; after ``<!-- docs-test: skip REASON -->`` it is not run.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:^<!-- docs-test: (?P<mark>slow|skip)[^>]*-->\n)?^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n"
    r"(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def blocks(page: Path) -> list[tuple[str, str, int, str | None]]:
    """(language, body, line number, mark) of every fenced block of ``page``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        body = textwrap.dedent(m["body"]) if m["indent"] else m["body"]
        out.append((m["lang"], body, text.count("\n", 0, m.start("body")) + 1, m["mark"]))
    return out


def shell_commands(lang: str, body: str) -> list[list[str]]:
    """The commands of a shell block, as argument lists (``&&`` chains split, comments dropped)."""
    lines = body.replace("\\\n", " ").splitlines()
    if lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = [*lexer, ";"]
        while ";" in tokens or "&&" in tokens:
            end = min(tokens.index(sep) for sep in (";", "&&") if sep in tokens)
            command, tokens = tokens[:end], tokens[end + 1 :]
            while command and re.fullmatch(r"\w+=\S*", command[0]):  # VAR=value prefixes
                command.pop(0)
            if command:
                commands.append(command)
    return commands


@functools.cache
def pytest_options() -> str:
    """``pytest bench --help``: pytest's, pytest-benchmark's and the bench suite's options."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--help", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout


def _options(tokens: list[str]) -> list[str]:
    return [t.split("=")[0] for t in tokens if t.startswith("--")]


def _accepted(option: str, source: str) -> bool:
    """``--opt`` (or its ``--no-opt`` form) is written in ``source``."""
    base = option.replace("--no-", "--", 1)
    return f'"{option}"' in source or f'"{base}"' in source or f"'{option}'" in source


def check_command(tokens: list[str]) -> list[str]:
    """What is wrong with one command (empty: nothing)."""
    cmd, args = tokens[0], tokens[1:]
    if cmd in ("cd", "git", "rm", "mkdir"):
        return []
    if cmd in ("pip", "pip3") or (cmd.startswith("python") and args[:2] == ["-m", "pip"]):
        args = args[2:] if cmd.startswith("python") else args
        pyproject = (ROOT / "pyproject.toml").read_text()
        problems = []
        for arg in args[1:]:
            extras = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
            for extra in extras[1].split(",") if extras else []:
                if not re.search(rf"^{extra} = \[", pyproject, re.MULTILINE):
                    problems.append(f"no extra {extra!r} in pyproject.toml")
        return problems
    if cmd.startswith("python"):
        if args[:2] == ["-m", "pytest"]:
            return _pytest_problems(args[2:])
        if args[:1] == ["-m"]:
            module = args[1]
            if importlib.util.find_spec(module) is None:
                return [f"no module {module}"]
            source = (ROOT / "structprune_triton" / "demo.py").read_text() if module == "structprune_triton" else None
            return [f"{module} has no option {o}" for o in _options(args) if source and not _accepted(o, source)]
        return _check_file(args[0], args[1:])
    if cmd == "bash":
        return _check_file(args[0], args[1:])
    if (ROOT / cmd).is_file():
        return _check_file(cmd, args)
    return [f"unknown command {cmd!r} (teach tests/test_docs.py to check it)"]


def _pytest_problems(args: list[str]) -> list[str]:
    """Unknown options, and paths that do not exist (an option's value is not a path)."""
    help_text, problems, value_next = pytest_options(), [], False
    for arg in args:
        if value_next:
            value_next = False
        elif arg.startswith("-"):
            name = arg.split("=")[0]
            if name.startswith("--") and name not in help_text:
                problems.append(f"pytest has no option {name}")
            takes_value = re.search(rf"(^|[ ,]){re.escape(name)}[ =][A-Za-z{{]", help_text, re.MULTILINE)
            value_next = "=" not in arg and takes_value is not None
        elif not (ROOT / arg.split("::")[0]).exists():
            problems.append(f"no path {arg}")
    return problems


def _check_file(path: str, args: list[str]) -> list[str]:
    file = ROOT / path
    if not file.is_file():
        return [f"no file {path}"]
    source = file.read_text()
    return [f"{path} has no option {o}" for o in _options(args) if not _accepted(o, source) and o not in source]


def _shell_cases():
    for page in PAGES:
        for lang, body, line, _ in blocks(page):
            if lang in ("bash", "sh", "shell", "console"):
                for tokens in shell_commands(lang, body):
                    yield pytest.param(tokens, id=f"{page.relative_to(ROOT)}:{line}:{tokens[0]}")


@pytest.mark.parametrize("tokens", list(_shell_cases()))
def test_shell_command_refers_to_what_exists(tokens: list[str]) -> None:
    assert check_command(tokens) == [], shlex.join(tokens)


_RUNNER = """
import sys, traceback
namespace = {"__name__": "__main__"}
for line, code in SNIPPETS:
    try:
        exec(compile(code, f"{PAGE}:{line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the block at {PAGE}:{line} failed")
"""


def _python_cases():
    for page in PAGES:
        snippets = [(line, body, mark) for lang, body, line, mark in blocks(page) if lang == "python"]
        run = [(line, body) for line, body, mark in snippets if mark != "skip"]
        if run:
            marks = [pytest.mark.slow] if any(mark == "slow" for *_, mark in snippets) else []
            yield pytest.param(page, run, id=str(page.relative_to(ROOT)), marks=marks)


@pytest.mark.parametrize("page,snippets", list(_python_cases()))
def test_python_blocks_run(page: Path, snippets: list[tuple[int, str]], tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = f"PAGE = {str(page.relative_to(ROOT))!r}\nSNIPPETS = {snippets!r}\n{_RUNNER}"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_page_is_checked() -> None:
    """The pages with commands are found, and the checker rejects what does not exist."""
    assert any(lang == "python" for lang, *_ in blocks(ROOT / "README.md"))
    assert check_command(["python", "-m", "structprune_triton", "--no-such-option"])
    assert check_command(["python", "bench/no_such_script.py"])
    assert check_command(["pip", "install", "-e", ".[no-such-extra]"])
    assert check_command(["python", "-m", "pytest", "bench", "--no-such-option"])
    assert check_command(["frobnicate"])
    assert check_command(["python", "-m", "pytest", "bench", "--benchmark-json", "x.json"]) == []
