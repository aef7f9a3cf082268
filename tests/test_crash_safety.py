"""Saving survives kill -9: the real training and conversion processes are killed in the middle of a save
(paused there deterministically by a patched writer), and the previous good checkpoint is still there, the
run resumes, and the folder swap leaves no partial folder behind (genjo/storage.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import require_checkpoint
from safetensors.torch import load_file

from genjo import load_model
from genjo.loading import DEFAULT_BASE_MODEL
from genjo.storage import commit_folder, prepare_staging, recover_folder, replacing_folder, retired_folder
from genjo.train import TrainArgs, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(stage="pretrain", d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, batch_size=4, seq_len=16,
            lr=3e-3, warmup_steps=1, steps=3, eval_every=1000, save_every=1)  # fmt: skip

# The child runs a command with one writer patched: at the chosen save it writes part of the file (or does the
# first rename of the swap), writes the marker file and sleeps until the test kills it with SIGKILL.
CHILD = r"""
import os, sys, time
from pathlib import Path
point, marker, command = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import torch
import transformers.modeling_utils as modeling_utils

def pause():
    marker.write_text("in the save")
    time.sleep(600)

calls = {"n": 0}
real_save_file, real_replace = modeling_utils.safe_save_file, os.replace

def half_written_weights(tensors, filename, *args, **kwargs):  # the weights file is cut in the middle
    folder = Path(filename).parent.name
    if folder.startswith(point.split(":")[1]):
        calls["n"] += 1
        if calls["n"] == int(point.split(":")[2]):
            real_save_file(tensors, filename, *args, **kwargs)
            size = os.path.getsize(filename)
            with open(filename, "r+b") as f:
                f.truncate(size // 2)
            pause()
    return real_save_file(tensors, filename, *args, **kwargs)

def first_rename_only(src, dst, *args, **kwargs):  # the old folder is set aside, the new one not yet in place
    real_replace(src, dst, *args, **kwargs)
    if str(dst).endswith("last.old"):
        calls["n"] += 1
        if calls["n"] == 1:
            pause()

if point.startswith("weights"):
    modeling_utils.safe_save_file = half_written_weights
elif point == "between-renames":
    os.replace = first_rename_only
if command == "train":
    from genjo.train import TrainArgs, train
    train(TrainArgs(**eval(sys.argv[4])))
else:
    from genjo.convert import convert
    convert(sys.argv[4], sys.argv[5])
"""


def run_and_kill(point: str, marker: Path, *args: str) -> None:
    """Run CHILD until it pauses inside the save (its marker file appears), then SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, point, str(marker), *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child never reached the save ({point}):\n{child.stdout.read().decode()[-3000:]}")
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()


def saved_step(run_dir: Path) -> int:
    return torch.load(run_dir / "last" / "training_state.pt", weights_only=True)["step"]


@pytest.fixture(scope="module")
def base_model_path() -> str:
    return require_checkpoint(DEFAULT_BASE_MODEL)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The same run without a kill: the weights a resumed run must end with."""
    run_dir = tmp_path_factory.mktemp("straight")
    train(TrainArgs(run_dir=str(run_dir), **TINY))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, step_left",
    [
        ("weights:last.saving:2", 1),  # the second save's weights half written: step 1's checkpoint stays
        ("between-renames", 1),  # step 2 complete beside, step 1 set aside as last.old: put back
        ("weights:final.saving:1", 3),  # the final export half written: nothing partial as final/
    ],
)
def test_a_training_run_killed_while_saving_keeps_its_last_checkpoint_and_resumes(
    point, step_left, straight_run, tmp_path
):
    run_dir = tmp_path / "run"
    run_and_kill(point, tmp_path / "marker", "train", repr({**TINY, "run_dir": str(run_dir)}))
    assert not (run_dir / "final").exists()  # the export never appears half written
    if point == "between-renames":
        assert not (run_dir / "last").exists() and retired_folder(run_dir / "last").is_dir()
    recover_folder(run_dir / "last")
    assert saved_step(run_dir) == step_left
    load_model(str(run_dir / "last"), device="cpu")  # a usable checkpoint
    train(TrainArgs(run_dir=str(run_dir), resume=True, **TINY))
    assert saved_step(run_dir) == 3 and not any(p.name.endswith((".saving", ".old")) for p in run_dir.iterdir())
    resumed, straight = (load_file(d / "final" / "model.safetensors") for d in (run_dir, straight_run))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_a_conversion_killed_while_writing_leaves_no_partial_folder_and_can_run_again(
    base_model_path, tmp_path
):  # fmt: skip
    dst = tmp_path / "converted"
    run_and_kill("weights:converted.saving:1", tmp_path / "marker", "convert", base_model_path, str(dst))
    assert not dst.exists()  # before: a folder with half the weights, which a rerun refused to overwrite
    from genjo.convert import convert

    convert(base_model_path, str(dst))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "marker"]
    load_model(str(dst), device="cpu")


# ----------------------------------------------------------------------------- the swap itself


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replacing_folder(folder) as staging:
        (staging / "config.json").write_text("new, half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"] and (folder / "config.json").read_text() == "old"


def test_a_swap_replaces_the_whole_folder_and_refuses_a_folder_of_other_files(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("old")
    (folder / "model-00002-of-00002.safetensors").write_text("a stale shard")
    staging = prepare_staging(folder)
    (staging / "config.json").write_text("new")
    commit_folder(staging, folder)
    assert [p.name for p in folder.iterdir()] == ["config.json"] and (folder / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    home = tmp_path / "models"  # not a checkpoint: never replaced as a whole
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a checkpoint folder"):
        prepare_staging(home)
    with pytest.raises(ValueError, match="--export .* is not a checkpoint folder"):
        train(TrainArgs(run_dir=str(tmp_path / "run"), export=str(home), **TINY))
    assert (home / "notes.txt").read_text() == "mine"
