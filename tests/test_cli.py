"""Command lines end a bad input with one line, ``PROG: error: MESSAGE`` and exit status 2 (argparse's own
convention), and keep the traceback of an unexpected error (genjo/cli.py)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from genjo.cli import run_command

ROOT = Path(__file__).resolve().parent.parent


def test_an_input_error_is_one_line_and_exit_status_2(capsys):
    def main():
        raise ValueError("--steps (0) must be a positive multiple of the number of blocks.")

    with pytest.raises(SystemExit) as stop:
        run_command(main, prog="generate.py")
    assert stop.value.code == 2
    assert (
        capsys.readouterr().err
        == "generate.py: error: --steps (0) must be a positive multiple of the number of blocks.\n"
    )
    with pytest.raises(SystemExit):
        run_command(lambda: open(ROOT / "no such file.jsonl"), prog="x")
    assert capsys.readouterr().err == f"x: error: No such file or directory: {ROOT / 'no such file.jsonl'}\n"


def test_an_unexpected_error_keeps_its_traceback():
    def main():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_command(main)
    assert run_command(lambda x: x + 1, 1) == 2  # main's result is returned


def test_a_script_prints_no_traceback_for_a_bad_input():
    """Before: the full traceback, then ``ValueError: ...``."""
    result = subprocess.run([sys.executable, "eval_reverse.py", "--data", "pairs.jsonl", "--prompt-format", "custom"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "eval_reverse.py: error: --forward-template must contain {text} (where the given line goes); got None. "
        "--prompt-format custom needs both templates."
    ]


def main_blocks() -> dict[str, ast.If]:
    """The ``if __name__ == "__main__":`` block of every script and module that has one."""
    blocks = {}
    for path in sorted(ROOT.rglob("*.py")):
        if any(part.startswith(".") or part in ("checkpoints", "tests") for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                blocks[str(path.relative_to(ROOT))] = node
    return blocks


def test_every_command_line_runs_its_main_through_run_command():
    blocks = main_blocks()
    assert {"generate.py", "chat.py", "app.py", "genjo/train/__main__.py", "genjo/convert.py"} <= set(blocks)
    calls_main = {name: "main(" in ast.unparse(block) for name, block in blocks.items()}
    missing = [
        name for name, block in blocks.items() if calls_main[name] and "run_command(main" not in ast.unparse(block)
    ]
    assert not missing, f"call main through genjo.cli.run_command in {missing}"
