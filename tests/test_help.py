"""Every script's --help: it exits 0, and each option says what it means and what its default is; renamed
flags: the old spelling still parses, the new one is the one shown.

The scripts build their parsers inside main(), so each main() is run in this process with
``ArgumentParser.parse_args`` replaced by one that records the parser and parses ``--help`` (one
import of torch for all scripts instead of one per subprocess). eval_genjo.py is lm-eval's own
command line (its flags are lm-eval's; see EVAL.md), so it is not checked here.
"""

import argparse
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (how a user runs it, module name or file under the repository root)
SCRIPTS = [
    ("python generate.py", "generate"),
    ("python get_log_likelihood.py", "get_log_likelihood"),
    ("python chat.py", "chat"),
    ("python app.py", "app"),
    ("python -m genjo.train", "genjo.train"),
    ("python -m genjo.evaluation", "genjo.evaluation"),
    ("python -m genjo.convert", "genjo.convert"),
    ("python -m genjo.reversal", "genjo.reversal"),
    ("python eval_reverse.py", "eval_reverse"),
    ("python eval_niah.py", "eval_niah"),
    ("python -m visualization.record", "visualization.record"),
    ("python -m visualization.render", "visualization.render"),
    *[(f"python benchmarks/{p.name}", f"benchmarks/{p.name}") for p in sorted((ROOT / "benchmarks").glob("*.py"))],
]


def load(target: str):
    """The module of a script: imported by name, or loaded from its file (benchmarks/ is not a package)."""
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = ROOT / target
    spec = importlib.util.spec_from_file_location(f"_help_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parsers_of(parser: argparse.ArgumentParser):
    """The parser and, recursively, its subcommands' parsers."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from parsers_of(sub)


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """One line per argument whose help is missing, or that takes a value and does not name its default."""
    problems = []
    for p in parsers_of(parser):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:  # internal (e.g. a benchmark's child-process setting): not listed
                continue
            name = "/".join(action.option_strings) or action.dest
            text = action.help if action.help not in (None, argparse.SUPPRESS) else ""
            if not text.strip():
                problems.append(f"{p.prog} {name}: no help text")
            elif action.option_strings and action.nargs != 0 and not action.required and "default" not in text.lower():
                problems.append(f"{p.prog} {name}: the help does not name the default ({text!r})")
    return problems


@pytest.mark.parametrize("command, target", SCRIPTS, ids=[command for command, _ in SCRIPTS])
def test_help_lists_every_option_with_its_meaning_and_default(command, target, monkeypatch, capsys):
    module = load(target)
    seen = []
    original = argparse.ArgumentParser.parse_args

    def parse_help(self, args=None, namespace=None):
        seen.append(self)
        return original(self, ["--help"], namespace)

    monkeypatch.setattr(sys, "argv", [command.split()[-1], "--help"])
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_help), pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code in (0, None), f"{command} --help exited with {exited.value.code}"
    assert seen, f"{command} --help did not go through ArgumentParser.parse_args"
    assert capsys.readouterr().out.startswith("usage:")
    problems = help_problems(seen[0])
    assert not problems, f"{command} --help:\n" + "\n".join(problems)


# (module, the flags a command line needs besides the renamed one, old spelling and its value, where the value
# lands, the expected value, the spelling --help shows): every flag renamed to the spelling shared by all scripts.
RENAMED = [
    ("chat", [], ["--cfg", "1.5"], "cfg_scale", 1.5, "--cfg-scale"),
    ("get_log_likelihood", [], ["--cfg", "1.5"], "cfg_scale", 1.5, "--cfg-scale"),
    ("eval_reverse", ["--data", "pairs.jsonl"], ["--cfg", "1.5"], "cfg_scale", 1.5, "--cfg-scale"),
    ("eval_reverse", ["--data", "pairs.jsonl"], ["--eos-inf"], "logits_eos_inf", True, "--logits-eos-inf"),
    ("eval_reverse", ["--data", "pairs.jsonl"], ["--no-eos-inf"], "logits_eos_inf", False, "--logits-eos-inf"),
    ("visualization.record", ["--output", "t.json"], ["--cfg", "1.5"], "cfg_scale", 1.5, "--cfg-scale"),
    ("visualization.record", [], ["--out", "t.json"], "output", "t.json", "--output"),
    ("genjo.reversal", [], ["--out-json", "r.json"], "output", "r.json", "--output"),
]


class ParserBuilt(Exception):
    """Raised in place of parsing, once main() has built its parser."""


def parser_of(module) -> argparse.ArgumentParser:
    """The parser a script's main() builds, taken at its parse_args call (main() goes no further)."""
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise ParserBuilt

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), pytest.raises(ParserBuilt):
        module.main()
    return seen[0]


@pytest.mark.parametrize("target, needed, old, dest, value, shown", RENAMED, ids=[f"{r[0]} {r[2][0]}" for r in RENAMED])
def test_old_spellings_still_parse_and_help_shows_the_new_one(target, needed, old, dest, value, shown):
    parser = parser_of(load(target))
    assert getattr(parser.parse_args([*needed, *old]), dest) == value
    text = parser.format_help()
    assert re.search(rf"(?<![\w-]){re.escape(shown)}(?![\w-])", text), f"{shown} is not in {target} --help"
    assert not re.search(rf"(?<![\w-]){re.escape(old[0])}(?![\w-])", text), f"{old[0]} is in {target} --help"
