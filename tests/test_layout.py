"""The house rules: the library lives in genjo/, the scripts are thin and import from it, never the reverse.

- no module under genjo/ imports a top-level script (generate, chat, app, ...);
- no name starting with ``_`` is imported from another file (a private helper that two files need is public);
- no benchmark or example patches sys.path (they run from a clone after the README's install);
- the scripts' public names are the package's own objects (``from generate import generate`` in a notebook is
  ``genjo.generate``);
- the embedded checkpoints' model code copies are refreshed by one command, which the guarding test names.
"""

import ast
from pathlib import Path

import pytest

import generate as generate_script
import genjo
import get_log_likelihood as likelihood_script
from genjo import refresh_remote_code

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}  # generate, get_log_likelihood, chat, app, eval_genjo, eval_reverse
PYTHON_FILES = [
    p
    for p in sorted(ROOT.rglob("*.py"))
    if not any(part.startswith(".") or part in ("checkpoints", "build", "runs") for part in p.relative_to(ROOT).parts)
]


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import statement of a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), [alias.name for alias in node.names], node.lineno))
    return found


def test_the_package_never_imports_a_top_level_script():
    assert SCRIPTS >= {"generate", "get_log_likelihood", "chat", "app", "eval_genjo"}
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in PYTHON_FILES
        if path.relative_to(ROOT).parts[0] == "genjo"
        for module, _, line in imports(path)
        if module.split(".")[0] in SCRIPTS
    ]
    assert not offenders, offenders


def test_no_private_name_is_imported_from_another_file():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
        for path in PYTHON_FILES
        for module, names, line in imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offenders, offenders


def test_no_benchmark_or_example_patches_sys_path():
    offenders = [
        str(path.relative_to(ROOT))
        for path in PYTHON_FILES
        if path.relative_to(ROOT).parts[0] in ("benchmarks", "examples") and "sys.path" in path.read_text()
    ]
    assert not offenders, offenders


def test_scripts_re_export_the_package_objects():
    assert generate_script.generate is genjo.generate
    assert generate_script.GenerationStats is genjo.GenerationStats
    assert likelihood_script.get_log_likelihood is genjo.get_log_likelihood
    assert likelihood_script.get_log_likelihoods is genjo.get_log_likelihoods


@pytest.mark.parametrize("script", ["generate.py", "get_log_likelihood.py"])
def test_library_scripts_are_thin(script):
    """Argument parsing and calls: well under 250 lines, no function longer than a screen."""
    source = (ROOT / script).read_text()
    assert len(source.splitlines()) < 150, script
    longest = max(
        node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
    )
    assert longest <= 60, (script, longest)


def test_generate_reads_like_the_paper():
    """The sampler's entry point stays short: the strategies and rules are small pieces beside it."""
    source = (ROOT / "genjo" / "sampling.py").read_text()
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "generate"]
    assert node.end_lineno - node.lineno + 1 < 170
    assert len(node.args.args) + len(node.args.kwonlyargs) <= 20  # refresh_every left the signature


def test_refresh_remote_code_finds_and_fixes_a_stale_copy(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "modeling_genjo.py").write_text("# an old copy\n")
    monkeypatch.setattr(refresh_remote_code, "CHECKPOINTS", tmp_path)
    assert [p.name for p in refresh_remote_code.stale_copies()] == ["modeling_genjo.py", "configuration_genjo.py"]
    assert refresh_remote_code.main(["--check"]) == 1
    assert refresh_remote_code.main([]) == 0
    assert refresh_remote_code.stale_copies() == []
    assert (folder / "modeling_genjo.py").read_bytes() == (ROOT / "genjo" / "modeling_genjo.py").read_bytes()


def test_embedded_checkpoints_model_code_is_current():
    stale = refresh_remote_code.stale_copies()
    assert not stale, f"stale model code copies {stale}: run `{refresh_remote_code.COMMAND}`"
