"""Genjo installs as a package: the wheel built from pyproject.toml holds the library modules and every
file of the embedded checkpoints, and, installed elsewhere, loads the embedded model from any directory."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL_MODULES = ("generate.py", "get_log_likelihood.py", "chat.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the clone (a build writes build/ and *.egg-info next to its sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    ignore = shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "runs", "eval_results", "imgs")
    shutil.copytree(ROOT, source, ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = tmp.glob("genjo-*.whl")
    return path


def test_wheel_holds_the_library_and_every_checkpoint_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    checkpoint_files = [
        p.relative_to(ROOT).as_posix()
        for p in sorted((ROOT / "genjo" / "checkpoints").rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(name.endswith("model.safetensors") for name in checkpoint_files)
    package_modules = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "genjo").rglob("*.py"))]
    missing = [f for f in [*checkpoint_files, *package_modules, *TOP_LEVEL_MODULES] if f not in names]
    assert not missing, f"not in the wheel (pyproject.toml's package-data / py-modules): {missing}"
    # Only the library: no tests, benchmarks or scripts that run from the clone.
    tops = {name.split("/")[0] for name in names if not name.startswith("genjo-")}
    assert tops == {"genjo", *TOP_LEVEL_MODULES}
    # A pure-Python wheel with no .data folder: unpacking it is exactly what pip installs.
    wheel_info = next(n for n in names if n.endswith(".dist-info/WHEEL"))
    assert "Root-Is-Purelib: true" in zipfile.ZipFile(wheel).read(wheel_info).decode()
    assert not any(".data/" in name for name in names)


def test_wheel_names_its_licence(wheel):
    """MIT (the original LLaDA code's licence), as an SPDX expression, with the LICENSE text in the dist-info."""
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    licence = next(n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
    assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()


def test_installed_wheel_answers_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = f"""
import generate, genjo, get_log_likelihood
from genjo import load_model
from genjo.evaluation import answer_questions
for module in (generate, genjo, get_log_likelihood):
    assert module.__file__.startswith({str(site)!r}), module.__file__
assert genjo.generate is generate.generate and genjo.get_log_likelihood is get_log_likelihood.get_log_likelihood
model, tokenizer = load_model()
print(answer_questions(model, tokenizer, ["Sort: 3 1 2", "Reverse: alpha bravo charlie"]))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['1 2 3', 'charlie bravo alpha']"
