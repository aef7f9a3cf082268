"""The documentation stays true: the README's quick start runs as written and prints what the README shows,
its install commands are the CI's, every relative link resolves, and every command uses the current flags.

The quick start is whatever lies between ``<!-- quickstart -->`` and ``<!-- /quickstart -->`` in README.md: each
code block there (bash or python) is run, and the ```text block right after it, if any, is its exact output. The
install commands (venv, pip, the test suite itself) are not run; they are checked against ``.ci/run`` instead.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from genjo.settings import SAMPLER_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "GUIDELINES.md", ROOT / "EVAL.md", *sorted((ROOT / "docs").glob("*.md"))]
QUICKSTART = re.compile(r"<!-- quickstart -->(.*?)<!-- /quickstart -->", re.S)
FENCED_BLOCK = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# Commands the quick start shows but this test does not run: the environment, the install, the tests themselves.
INSTALL_COMMANDS = (("python3", "-m", "venv"), ("pip", "install"), ("python", "-m", "pytest"))
# The flag spellings that commands in the documentation must no longer use (they still parse, hidden).
OLD_FLAGS = {alias for setting in SAMPLER_SETTINGS for alias in setting.aliases} | {"--out", "--out-json"}


def quickstart_blocks() -> list[tuple[str, str, Optional[str]]]:
    """(language, code, shown output or None) of every code block inside the README's quick-start markers."""
    blocks = []
    for region in QUICKSTART.findall(README.read_text()):
        for language, code in FENCED_BLOCK.findall(region):
            if language == "text" and blocks and blocks[-1][2] is None:
                blocks[-1] = (blocks[-1][0], blocks[-1][1], code)
            elif language != "text":
                blocks.append((language, code, None))
    return blocks


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block as argument lists: continuation lines joined, comments dropped, and a
    line of several commands (``a && b``) split into them."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1 :]
    return [command for command in commands if command]


def is_install(command: list[str]) -> bool:
    return command[0] == "source" or any(tuple(command[: len(prefix)]) == prefix for prefix in INSTALL_COMMANDS)


def ci_commands() -> list[str]:
    """The commands .ci/run executes (its lines that are not comments)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_quick_start_has_the_install_commands_of_the_ci():
    shown = [" ".join(command) for _, code, _ in quickstart_blocks() for command in shell_commands(code)]
    cpu_torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    for command in (cpu_torch, "pip install -r requirements.txt", "python -m pytest -q"):
        assert command in shown, f"the README's quick start no longer shows `{command}` (.ci/run mirrors it)"
    assert shown.index(cpu_torch) < shown.index("pip install -r requirements.txt") < shown.index("python -m pytest -q")
    ci = ci_commands()
    assert "pip install -r requirements.txt" in ci and "python -m pytest -q" in ci
    assert any("torch==2.13.0" in line for line in ci)
    # .ci/run quotes the README's PyTorch lines in its comments: each must still be in the quick start.
    quoted = re.findall(r"^#.*?:\s+(pip install torch\S*.*)$", (ROOT / ".ci" / "run").read_text(), re.M)
    region = "".join(QUICKSTART.findall(README.read_text()))
    assert len(quoted) == 2 and all(f"`{line.strip()}`" in region for line in quoted), quoted


def test_the_quick_start_runs_as_written_and_prints_what_the_readme_shows(capsys):
    blocks = quickstart_blocks()
    ran = []
    for language, code, shown in blocks:
        if language == "bash":
            commands = [command for command in shell_commands(code) if not is_install(command)]
            unknown = [command for command in commands if command[0] != "python"]
            assert not unknown, f"the quick start shows {unknown}: run here only `python ...` commands"
            output = ""
            for command in commands:
                env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny model: one thread is fastest on a busy machine
                done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True,
                                      text=True, timeout=120)  # fmt: skip
                assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}"
                output += done.stdout
                ran.append(shlex.join(command))
        elif language == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "__main__"})
            output = capsys.readouterr().out
            ran.append("the Python example")
        else:
            pytest.fail(f"the quick start has a ```{language} block; it runs only bash and python blocks")
        if shown is not None:
            assert output == shown, f"the README shows another output for:\n{code}"
    assert "python generate.py" in ran and "the Python example" in ran, ran
    assert "Q: Sort: 7 3 9 1 4\nA: 1 3 4 7 9\n" in README.read_text()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def without_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (which hold brackets that are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCED_BLOCK.sub("", text))


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCED_BLOCK.sub("", path.read_text()), re.M):
        anchor = github_anchor(heading)
        found.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(document):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(document.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_commands_in_the_documentation_use_the_current_flag_spellings(document):
    text = document.read_text()
    commands = [code for _, code in FENCED_BLOCK.findall(text)]
    commands += re.findall(r"`((?:python|\./|accelerate|ACCELERATE)[^`\n]*)`", text)
    old = sorted({word for code in commands for word in re.findall(r"--[\w-]+", code) if word in OLD_FLAGS})
    assert not old, f"{document.relative_to(ROOT)} writes the old flag spellings {old} in a command"
    # A flag named in prose is one of the current ones too, unless the line says it is the old spelling.
    prose = [
        line.strip()
        for line in FENCED_BLOCK.sub("", text).splitlines()
        if set(re.findall(r"`(--[\w-]+)`", line)) & OLD_FLAGS and not re.search(r"\bold(er)?\b", line, re.I)
    ]
    assert not prose, f"{document.relative_to(ROOT)} names old flag spellings in: {prose}"
