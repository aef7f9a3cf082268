"""Training: both losses go down from scratch, in one process and data-parallel under accelerate."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genjo import GenjoModelLM
from genjo.train import TrainArgs, forward_process, sft_batch, sft_loss, train

ROOT = Path(__file__).resolve().parent.parent
TINY = "--d-model 32 --n-layers 2 --n-heads 2 --mlp-hidden-size 64 --batch-size 16 --lr 3e-3 --warmup-steps 5"
TINY = TINY.split() + "--save-every 1000 --eval-problems 2 --no-resume".split()


def curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "learning_curve.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(stage: str, run_dir: Path, extra: list[str], processes: int = 1) -> None:
    args = ["-m", "genjo.train", stage, "--run-dir", str(run_dir), *TINY, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, *args]
    else:  # the launch that really starts 2 CPU processes (plain --cpu starts one)
        env["ACCELERATE_USE_CPU"] = "true"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *args]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    if processes > 1:
        assert f"{processes} process(es)" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def single_process_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    run_stage("pretrain", root / "base", ["--steps", "40", "--eval-every", "10", "--seq-len", "32"])
    run_stage("sft", root / "sft", ["--init", str(root / "base" / "final"), "--steps", "40", "--eval-every", "20"])
    return root


def test_pretraining_and_sft_lower_the_loss(single_process_runs):
    pre = curve(single_process_runs / "base")
    assert [r["step"] for r in pre] == [10, 20, 30, 40]
    assert pre[-1]["loss"] < 0.8 * pre[0]["loss"], pre
    sft = curve(single_process_runs / "sft")
    assert sft[-1]["loss"] < sft[0]["loss"], sft
    assert set(sft[-1]["accuracy"]) == {"capitals", "sorting", "reversal", "addition", "all"}
    model = GenjoModelLM.from_pretrained(single_process_runs / "sft" / "final")
    assert model.config.sampler_defaults["gen_length"] == 32
    assert (single_process_runs / "sft" / "final" / "tokenizer.json").exists()


def test_two_processes_under_accelerate_see_the_same_batches(single_process_runs, tmp_path):
    run_stage("pretrain", tmp_path / "base", ["--steps", "40", "--eval-every", "10", "--seq-len", "32"], processes=2)
    single, double = curve(single_process_runs / "base"), curve(tmp_path / "base")
    for a, b in zip(single, double):
        assert a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)


def test_sft_loss_never_masks_the_prompt_and_counts_padding_as_answer():
    from genjo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    args = TrainArgs(stage="sft", batch_size=4)
    ids, prompt_lengths = sft_batch(args, tokenizer, step=0)
    assert (ids[:, -1] == tokenizer.eos_token_id).any() or ids.shape[1] > prompt_lengths.max()

    class Recorder(torch.nn.Module):  # uniform logits: CE = log V at every masked slot
        def forward(self, noisy):
            self.noisy = noisy
            return type("Out", (), {"logits": torch.zeros(*noisy.shape, 16, requires_grad=True)})()

    torch.manual_seed(0)
    noisy, masked, p_mask = forward_process(ids.clamp(max=15), mask_id=2, eps=1e-3)
    recorder = Recorder()
    loss = sft_loss(recorder, ids.clamp(max=15), prompt_lengths, noisy, masked, p_mask)
    for row, length in enumerate(prompt_lengths.tolist()):
        assert torch.equal(recorder.noisy[row, :length], ids.clamp(max=15)[row, :length])
    answer_masked = masked & (torch.arange(ids.shape[1])[None] >= prompt_lengths[:, None])
    expected = (answer_masked / p_mask).sum(1) * torch.log(torch.tensor(16.0)) / (ids.shape[1] - prompt_lengths)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_data_are_a_function_of_seed_and_step():
    from genjo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    args = TrainArgs(stage="sft", batch_size=8, sft_plain_text=0.25)
    a, la = sft_batch(args, tokenizer, step=5)
    b, lb = sft_batch(args, tokenizer, step=5)
    assert torch.equal(a, b) and torch.equal(la, lb) and (la == 0).sum() == 2
    c, _ = sft_batch(args, tokenizer, step=6)
    assert not torch.equal(a[:, : c.shape[1]], c[:, : a.shape[1]])
    assert train is not None


def test_every_flag_says_what_it_does_and_its_default():
    from genjo.train import build_parser

    actions = [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(actions) > 40
    for action in actions:
        assert action.help and "default" in action.help and len(action.help) > 30, action.option_strings
    assert build_parser().parse_args(["pretrain", "--seq-length", "7"]).seq_len == 7


def test_recipe_writes_into_the_run_folder_unless_asked_to_replace_the_shipped_models(monkeypatch):
    from genjo.train import cli, recipe

    exports = []
    monkeypatch.setattr(recipe, "train", lambda args: exports.append(args.export) or "prev")
    cli.main(["recipe", "--run-dir", "runs/x"])
    assert [e for e in exports if e] == ["runs/x/genjo-tiny-base", "runs/x/genjo-tiny-instruct"]
    exports.clear()
    cli.main(["recipe", "--replace-shipped"])
    shipped = ROOT / "genjo" / "checkpoints"
    assert [e for e in exports if e] == [f"{shipped}/genjo-tiny-base", f"{shipped}/genjo-tiny-instruct"]


def test_a_schedule_shorter_than_its_warm_up_warns():
    from genjo.train import check_args

    with pytest.warns(UserWarning, match=r"--steps \(10\) is shorter than --warmup-steps \(50\)"):
        check_args(TrainArgs(steps=10, warmup_steps=50))
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        check_args(TrainArgs(batch_size=6, grad_accum=4))


def launch_fsdp(stage: str, flags: list[str], wrap: str = "GenjoBlock") -> str:
    """`accelerate launch --config_file configs/fsdp_cpu_2proc.yaml -m genjo.train STAGE FLAGS`: FSDP2 over 2 CPU
    processes (gloo, fp32), one `wrap` block per unit; returns the output, after checking the run was sharded."""
    pytest.importorskip("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "fsdp_cpu_2proc.yaml"), "--fsdp_transformer_layer_cls_to_wrap", wrap,
               "--main_process_port", str(free_port()), "-m", "genjo.train", stage, *flags]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    return result.stdout


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_resumes_and_exports_like_one_process(tmp_path, one_thread):
    """SFT from the embedded instruct model: the sharded run, stopped after step 1 and resumed from its FSDP
    optimizer shards, gives the single process's losses and held-out accuracy, and exports a loadable folder."""
    from genjo import load_model
    from genjo.train import main

    init = ROOT / "genjo" / "checkpoints" / "genjo-tiny-instruct"
    flags = ["--init", str(init), "--steps", "2", "--batch-size", "8", "--lr", "1e-4", "--warmup-steps", "1",
             "--eval-every", "1", "--eval-problems", "2", "--save-every", "1000"]  # fmt: skip
    main(["sft", *flags, "--run-dir", str(tmp_path / "one"), "--no-resume"])
    launch_fsdp("sft", [*flags, "--run-dir", str(tmp_path / "fsdp"), "--no-resume", "--stop-at", "1"])
    assert len(list((tmp_path / "fsdp" / "last" / "optimizer").iterdir())) > 0  # the sharded optimizer state
    assert "steps 1..2" in launch_fsdp("sft", [*flags, "--run-dir", str(tmp_path / "fsdp")])  # resumed
    one, fsdp = curve(tmp_path / "one"), curve(tmp_path / "fsdp")
    assert [r["step"] for r in one] == [r["step"] for r in fsdp] == [1, 2]
    for a, b in zip(one, fsdp):
        assert a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["accuracy"] == a["accuracy"]  # every family's, gathered from the two shares
    # The export carries genjo's modeling code (not torch's FSDP classes) and the single process's weights.
    final = tmp_path / "fsdp" / "final"
    assert (final / "modeling_genjo.py").exists() and not list(final.glob("_fsdp*.py"))
    sharded, single = load_model(str(final))[0].state_dict(), load_model(str(tmp_path / "one" / "final"))[0]
    for name, weight in single.state_dict().items():
        torch.testing.assert_close(sharded[name], weight, rtol=0, atol=1e-5)


def test_a_run_resumes_only_the_way_it_was_saved_with_or_without_fsdp(tmp_path):
    """An FSDP checkpoint (optimizer shards in last/optimizer) resumed by one process, or a one-process checkpoint
    resumed under FSDP: a ValueError saying how the run was saved (before: 'not a complete training state')."""
    from genjo.train.loop import load_training_state

    sharded = tmp_path / "fsdp" / "last"
    (sharded / "optimizer").mkdir(parents=True)
    torch.save({"step": 1, "tokens": 8, "data": {}, "world_size": 2}, sharded / "training_state.pt")
    with pytest.raises(ValueError, match=r"saved under FSDP by 2 processes .* resume it under FSDP"):
        load_training_state(sharded / "training_state.pt", fsdp=False)
    assert load_training_state(sharded / "training_state.pt", fsdp=True)["step"] == 1
    whole = tmp_path / "one" / "last"
    whole.mkdir(parents=True)
    torch.save({"step": 1, "tokens": 8, "data": {}, "optimizer": {}, "world_size": 1}, whole / "training_state.pt")
    with pytest.raises(ValueError, match=r"saved without FSDP .* resume it as it was run"):
        load_training_state(whole / "training_state.pt", fsdp=True)
    assert load_training_state(whole / "training_state.pt", fsdp=False)["step"] == 1


def test_the_learning_curve_restarts_with_the_run_and_keeps_no_record_past_a_resumed_checkpoint(tmp_path):
    common = dict(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, batch_size=8, lr=3e-3, warmup_steps=2,
                  eval_every=2, save_every=4, seq_len=32, run_dir=str(tmp_path / "run"))  # fmt: skip
    train(TrainArgs(stage="pretrain", steps=4, **common))  # its checkpoint: step 4
    path = tmp_path / "run" / "learning_curve.jsonl"
    # a crash after the record of step 6 and half of step 7's were written, the checkpoint still at step 4
    path.write_text(path.read_text() + '{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    train(TrainArgs(stage="pretrain", steps=8, **common))  # resumes at step 4: steps 6 and 8 once each
    assert [r["step"] for r in curve(tmp_path / "run")] == [2, 4, 6, 8]
    train(TrainArgs(stage="pretrain", steps=2, resume=False, **common))  # started over: a new curve
    assert [r["step"] for r in curve(tmp_path / "run")] == [2]
