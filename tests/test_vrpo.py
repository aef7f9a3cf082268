"""VRPO (genjo/train/preference.py): the ELBO estimator and its noise, the loss, the preference data, the stage."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import EOS, MASK, tiny_model
from safetensors.torch import load_file

from genjo.train import TrainArgs, forward_process, sft_loss, train
from genjo.train.files import check_preference_files, preference_triple
from genjo.train.pairs import corrupted, exact_match, label_pairs
from genjo.train.preference import (
    ElboNoise,
    draw_elbo_noise,
    draw_preference_noise,
    elbo_estimates,
    pair_scores,
    parse_allocation,
    reference_pair_elbos,
    vrpo_loss,
    vrpo_step_loss,
    vrpo_step_tensors,
)

ROOT = Path(__file__).resolve().parent.parent


def pairs_batch():
    """Three pairs of different lengths: chosen (3, 12), rejected (3, 12), prompt_lengths (3,), lengths (3,)."""
    torch.manual_seed(1)
    prompt_lengths, lengths = torch.tensor([4, 3, 5]), torch.tensor([12, 9, 10])
    chosen = torch.randint(6, 60, (3, 12))
    rejected = torch.randint(6, 60, (3, 12))
    columns = torch.arange(12)[None, :]
    rejected = torch.where(columns < prompt_lengths[:, None], chosen, rejected)  # the same prompt
    padding = columns >= lengths[:, None]
    return chosen.masked_fill(padding, EOS), rejected.masked_fill(padding, EOS), prompt_lengths, lengths


def test_policy_equal_to_the_reference_with_antithetic_noise_gives_log_2_and_a_zero_margin(one_thread):
    policy = tiny_model(0).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    chosen, rejected, prompt_lengths, lengths = pairs_batch()
    noise = draw_preference_noise(chosen, rejected, prompt_lengths, lengths, 8, "optimal", True, 1e-3,
                                  torch.Generator().manual_seed(0))  # fmt: skip
    scores = pair_scores(policy, reference, chosen, rejected, lengths, noise, MASK)
    assert torch.equal(scores, torch.zeros(3))
    loss = vrpo_loss(scores, beta=0.1)
    assert loss.item() == torch.tensor(math.log(2), dtype=torch.float32).item()
    # independent noise for the reference: the same models no longer give a zero score
    own = draw_preference_noise(chosen, rejected, prompt_lengths, lengths, 8, "optimal", False, 1e-3,
                                torch.Generator().manual_seed(0))  # fmt: skip
    assert not own.antithetic and (pair_scores(policy, reference, chosen, rejected, lengths, own, MASK) != 0).all()


def test_the_reference_never_receives_gradients(one_thread):
    policy = tiny_model(0).train()
    reference = tiny_model(1)  # a different model whose parameters would take gradients if it were in the graph
    chosen, rejected, prompt_lengths, lengths = pairs_batch()
    noise = draw_preference_noise(chosen, rejected, prompt_lengths, lengths, 4, "naive", True, 1e-3,
                                  torch.Generator().manual_seed(0))  # fmt: skip
    reference_elbo = reference_pair_elbos(reference, chosen, rejected, lengths, noise, MASK)
    assert not any(e.requires_grad for e in reference_elbo)
    vrpo_loss(pair_scores(policy, reference, chosen, rejected, lengths, noise, MASK), 0.5).backward()
    assert all(p.grad is None for p in reference.parameters())
    assert sum(float(p.grad.abs().sum()) for p in policy.parameters()) > 0
    # stored reference estimates give the same scores as running the reference
    a = pair_scores(policy, reference, chosen, rejected, lengths, noise, MASK)
    b = pair_scores(policy, None, chosen, rejected, lengths, noise, MASK, reference_elbo)
    assert torch.equal(a, b)


def test_the_estimate_is_the_sft_loss_sum_with_the_prompt_never_masked(one_thread):
    model = tiny_model(0)
    chosen, _, prompt_lengths, _ = pairs_batch()
    lengths = torch.full((3,), 12)  # no batch padding: the rows of an SFT batch
    noisy, masked, p_mask = forward_process(chosen, MASK, 1e-3, torch.Generator().manual_seed(3))
    prompt = torch.arange(12)[None, :] < prompt_lengths[:, None]
    noise = ElboNoise((masked & ~prompt)[:, None, :], p_mask[:, :1])
    estimates = elbo_estimates(model, chosen, lengths, noise, MASK)
    for row in range(3):
        one = slice(row, row + 1)
        sft = sft_loss(model, chosen[one], prompt_lengths[one], *(t[one] for t in (noisy, masked, p_mask)))
        assert estimates[row].item() == pytest.approx(-sft.item() * (12 - prompt_lengths[row].item()), rel=1e-5)
    drawn = draw_elbo_noise(chosen, prompt_lengths, torch.tensor([12, 9, 10]), 8, "2x4")
    assert drawn.masked.shape == (3, 8, 12) and drawn.p_mask.shape == (3, 8)
    for row, (p, n) in enumerate(zip([4, 3, 5], [12, 9, 10])):
        assert not drawn.masked[row, :, :p].any() and not drawn.masked[row, :, n:].any()
    same_time, next_time = drawn.p_mask[:, 3], drawn.p_mask[:, 4]  # 2 times x 4 masks: copies 0-3 share a time
    assert torch.equal(drawn.p_mask[:, 0], same_time) and not torch.equal(drawn.p_mask[:, 0], next_time)


def test_sft_weight_adds_the_sft_loss_of_the_chosen_answers_on_the_same_noise(one_thread):
    """--sft-weight w: loss = VRPO + w x mean over pairs of the SFT loss of y_w (sum CE / p over masked answer
    slots, averaged over the copies, divided by the answer length with its EOS padding)."""
    policy = tiny_model(0).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    chosen, rejected, prompt_lengths, lengths = pairs_batch()
    args = TrainArgs(stage="vrpo", budget=4, allocation="optimal", antithetic=True)
    tensors = vrpo_step_tensors(args, (chosen, rejected, prompt_lengths, lengths), step=0)
    loss = lambda w: vrpo_step_loss(policy, *tensors, reference=reference, beta=0.1, mask_id=MASK, sft_weight=w)  # noqa: E731
    assert loss(0.0).item() == torch.tensor(math.log(2)).item()  # policy = reference, antithetic
    masked, p_mask = tensors[4], tensors[5]  # the chosen answers' noise: (3, 4, 12), (3, 4)
    expected = []
    for row in range(3):
        copies = [-elbo_estimates(policy, chosen[row : row + 1], lengths[row : row + 1],
                                  ElboNoise(masked[row : row + 1, c : c + 1], p_mask[row : row + 1, c : c + 1]), MASK)
                  for c in range(4)]  # fmt: skip
        expected.append(torch.cat(copies).mean() / (lengths[row] - prompt_lengths[row]))
    sft = torch.stack(expected).mean()
    assert sft.item() > 0
    assert loss(0.5).item() == pytest.approx(math.log(2) + 0.5 * sft.item(), rel=1e-5)
    with pytest.raises(ValueError, match="sft_weight must be >= 0"):
        train(TrainArgs(stage="vrpo", init="x", data="y", sft_weight=-1.0))


def exact_elbo(model, ids: torch.Tensor, prompt_length: int, eps: float) -> float:
    """E[B] of one sequence: every masking S of its T answer slots, weighted by the integral over t of
    p^(|S| - 1) (1 - p)^(T - |S|) (the Bernoulli probability of S times the 1/p weight)."""
    answer = ids.numel() - prompt_length
    subsets = torch.tensor([[(s >> i) & 1 for i in range(answer)] for s in range(1, 2**answer)], dtype=torch.bool)
    masked = torch.cat([torch.zeros(len(subsets), prompt_length, dtype=torch.bool), subsets], dim=1)
    rows = ids[None].expand(len(subsets), -1)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.where(masked, MASK, rows)).logits.double(), -1)
    sums = (logp.gather(-1, rows[..., None])[..., 0] * masked).sum(1)  # (2^T - 1,)
    t = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    p = (1 - eps) * t + eps
    k = subsets.sum(1).double()[:, None]
    weights = (p[None] ** (k - 1) * (1 - p[None]) ** (answer - k)).mean(1)
    return float((weights * sums).sum())


def test_the_estimate_is_unbiased_whatever_the_allocation(one_thread):
    model = tiny_model(0, init_fn="normal", init_std=0.5)
    ids = torch.tensor([0, 9, 14, 3, 21, 33, 7, 40, 12, EOS])  # prompt of 4, answer of 6 slots
    truth = exact_elbo(model, ids, 4, 1e-3)
    repeats = 256
    batch = ids[None].expand(repeats, -1)
    prompt_lengths, lengths = torch.full((repeats,), 4), torch.full((repeats,), 10)
    for allocation in ("optimal", "naive", "2x4"):
        noise = draw_elbo_noise(batch, prompt_lengths, lengths, 8, allocation, 1e-3, torch.Generator().manual_seed(5))
        with torch.no_grad():
            estimates = elbo_estimates(model, batch, lengths, noise, MASK).double()
        standard_error = float(estimates.std() / math.sqrt(repeats))
        assert abs(float(estimates.mean()) - truth) < 4 * standard_error, (allocation, truth, standard_error)


def test_allocations_are_checked():
    assert parse_allocation("optimal", 8) == (8, 1) and parse_allocation("naive", 8) == (1, 8)
    assert parse_allocation("2x4", 8) == (2, 4)
    with pytest.raises(ValueError, match="spends 6 noisy copies but the budget is 8"):
        parse_allocation("2x3", 8)
    with pytest.raises(ValueError, match="'optimal'"):
        parse_allocation("best", 8)
    with pytest.raises(ValueError, match="budget must be a positive int"):
        parse_allocation("optimal", 0)


# ----------------------------------------------------------------------------- data


def write_lines(path: Path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "Sort: 3 1 2"}], "chosen": "1 2 3", "rejected": "1 3 2"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not a JSON line"),
        ({**GOOD, "chosen": None}, "'chosen' must be the text of an answer"),
        ({"chosen": "a", "rejected": "b"}, "'messages' is missing"),
        ({**GOOD, "messages": [{"role": "user"}]}, "every message needs a string 'role' and 'content'"),
        ({**GOOD, "messages": [*GOOD["messages"], {"role": "assistant", "content": "x"}]}, "must end with the user"),
        ({**GOOD, "rejected": "1 2 3"}, "are the same text"),
    ],
)
def test_bad_preference_lines_name_the_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "prefs.jsonl", [GOOD, "", GOOD, bad])
    with pytest.raises(ValueError, match=rf"prefs.jsonl:4: .*{message}"):
        check_preference_files([path])


def test_a_preference_line_renders_both_answers_as_the_assistant_turn(tiny_tokenizer):
    prompt, chosen, rejected = preference_triple(tiny_tokenizer, GOOD)
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert chosen[-1] == rejected[-1] == eot
    assert tiny_tokenizer.decode(chosen[:-1]) == "1 2 3" and tiny_tokenizer.decode(rejected[:-1]) == "1 3 2"
    assert tiny_tokenizer.decode(prompt).endswith("assistant<|end_header_id|>\n\n")


def test_pairs_are_the_models_wrong_answer_against_a_right_one():
    conversations = [[{"role": "user", "content": q}] for q in ("a", "b", "c")]
    answers = [["x", "right-a"], ["right-b", "right-b"], ["y", "z"]]
    references = ["right-a", "right-b", "right-c"]
    pairs = label_pairs(conversations, answers, exact_match(references), references)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("right-a", "x"), ("right-c", "y")]


def test_corrupt_turns_a_conversation_answered_right_into_a_pair_against_a_corrupted_copy():
    assert [corrupted(a) for a in ("1 2 3", "43", "5", " 7 ")] == ["1 2", "4", "5 5", "7 7"]
    conversations = [[{"role": "user", "content": q}] for q in ("a", "b", "c")]
    answers = [["x", "right a"], ["right b", "right b"], ["y", "z"]]
    references = ["right a", "right b", "right c"]
    pairs = label_pairs(conversations, answers, exact_match(references), references, corrupt=corrupted)
    # a wrong answer of its own is still preferred to a corrupted copy; the corrupted copy only fills in
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("right a", "x"), ("right b", "right"), ("right c", "y")]
    assert pairs[1]["messages"] == conversations[1]


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def vrpo_files(tmp_path_factory, tiny_tokenizer):
    """A tiny random model saved as an SFT folder, and a preference file of 60 sorting pairs."""
    import random

    from genjo.tokenizer import special_token_ids
    from genjo.train import TrainArgs, new_model, save_checkpoint

    root = tmp_path_factory.mktemp("vrpo")
    torch.manual_seed(0)
    model = new_model(TrainArgs(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64), tiny_tokenizer)
    assert model.config.mask_token_id == special_token_ids(tiny_tokenizer)["mask_token_id"]
    save_checkpoint(model, tiny_tokenizer, str(root / "sft"))
    rng = random.Random(0)
    records = []
    for _ in range(60):
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
        right = " ".join(sorted(digits))
        wrong = " ".join(digits) if " ".join(digits) != right else right + " 0"
        records.append({"messages": [{"role": "user", "content": "Sort: " + " ".join(digits)}], "chosen": right,
                        "rejected": wrong})  # fmt: skip
    write_lines(root / "prefs.jsonl", records)
    return root


def vrpo_args(root: Path, run: str, **overrides) -> TrainArgs:
    settings = dict(stage="vrpo", init=str(root / "sft"), data=str(root / "prefs.jsonl"), run_dir=str(root / run),
                    steps=6, batch_size=4, budget=2, lr=1e-3, warmup_steps=1, eval_every=3, save_every=3,
                    eval_fraction=0.2, eval_rows=8, resume=False, shuffle_buffer=8)  # fmt: skip
    return TrainArgs(**{**settings, **overrides})


def curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "learning_curve.jsonl").read_text().splitlines()]


def test_vrpo_records_held_out_accuracy_and_margin_and_resumes_exactly(vrpo_files, one_thread):
    train(vrpo_args(vrpo_files, "straight"))
    train(vrpo_args(vrpo_files, "stopped", stop_at=3))
    train(vrpo_args(vrpo_files, "stopped", resume=True))
    straight, resumed = curve(vrpo_files / "straight"), curve(vrpo_files / "stopped")
    assert [r["step"] for r in straight] == [3, 6] and [r["step"] for r in resumed] == [3, 6]
    for record in straight:
        assert {"pref_accuracy", "pref_margin", "pref_loss", "loss"} <= set(record)
        assert 0 <= record["pref_accuracy"] <= 1
    assert straight[-1]["pref_margin"] == resumed[-1]["pref_margin"]
    a, b = (load_file(vrpo_files / run / "final" / "model.safetensors") for run in ("straight", "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vrpo_settings_are_checked_before_any_model_is_loaded(vrpo_files):
    with pytest.raises(ValueError, match="pass --init SFT_FOLDER"):
        train(vrpo_args(vrpo_files, "x", init=None))
    with pytest.raises(ValueError, match="spends 3 noisy copies"):
        train(vrpo_args(vrpo_files, "x", allocation="3x1"))
    bad = write_lines(vrpo_files / "bad.jsonl", [GOOD, {**GOOD, "rejected": 3}])
    with pytest.raises(ValueError, match="bad.jsonl:2: 'rejected' must be"):
        train(vrpo_args(vrpo_files, "x", data=bad))


def test_the_vrpo_command_line_has_its_own_defaults():
    from genjo.train import build_parser
    from genjo.train.args import VRPO_DEFAULTS

    ns = build_parser("vrpo").parse_args(["vrpo", "--allocation", "naive", "--no-antithetic"])
    assert ns.lr == VRPO_DEFAULTS["lr"] and ns.allocation == "naive" and not ns.antithetic and ns.budget == 8
    assert build_parser().parse_args(["sft"]).lr == TrainArgs().lr


@pytest.mark.slow
def test_two_processes_under_accelerate_give_the_numbers_of_one(vrpo_files, tmp_path):
    from test_train import free_port

    # the command line's vrpo defaults (VRPO_DEFAULTS) where they differ from TrainArgs'
    cli_defaults = dict(weight_decay=0.0, min_lr=1e-5, sft_max_len=512)
    train(vrpo_args(vrpo_files, "one", grad_accum=2, steps=4, eval_every=1, **cli_defaults))
    flags = ["--init", str(vrpo_files / "sft"), "--data", str(vrpo_files / "prefs.jsonl"), "--steps", "4",
             "--batch-size", "4", "--budget", "2", "--lr", "1e-3", "--warmup-steps", "1", "--eval-every", "1",
             "--save-every", "3", "--eval-fraction", "0.2", "--eval-rows", "8", "--no-resume", "--shuffle-buffer",
             "8", "--run-dir", str(vrpo_files / "two")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), "-m", "genjo.train", "vrpo", *flags]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    one, two = curve(vrpo_files / "one"), curve(vrpo_files / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    # step 1: the same pairs, noise and weights, so the same loss up to float rounding
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    # then the data-parallel gradient sum differs from the accumulated one in its last bits, which AdamW's
    # normalised update turns into weight differences of up to lr on near-zero gradients: close, not equal
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)
        assert b["pref_loss"] == pytest.approx(a["pref_loss"], rel=2e-3)
        assert b["pref_margin"] == pytest.approx(a["pref_margin"], abs=1e-2)


def test_bad_prompt_lines_of_the_pairs_helper_name_the_file_and_line(tmp_path):
    from genjo.train.pairs import read_prompts

    good = {"messages": [{"role": "user", "content": "Sort: 2 1"}], "answer": "1 2"}
    path = write_lines(tmp_path / "prompts.jsonl", [good, {"messages": good["messages"]}])
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: each line must be like"):
        read_prompts(path)
    assert read_prompts(write_lines(tmp_path / "ok.jsonl", [good, good])) == [good, good]


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_shards_a_moe_reference_and_gives_the_numbers_of_one(vrpo_files, tiny_tokenizer,
                                                                                       one_thread):  # fmt: skip
    """VRPO of a LLaDA-MoE model under FSDP2 (2 CPU processes, one GenjoMoeBlock per unit), policy and frozen
    reference both sharded: the losses, router losses and held-out margins of one process."""
    from test_train import launch_fsdp

    from genjo.train import TrainArgs, main, new_model, save_checkpoint

    torch.manual_seed(0)
    moe = new_model(TrainArgs(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, num_experts=4,
                              experts_per_token=2), tiny_tokenizer)  # fmt: skip
    save_checkpoint(moe, tiny_tokenizer, str(vrpo_files / "sft-moe"))
    flags = ["--init", str(vrpo_files / "sft-moe"), "--data", str(vrpo_files / "prefs.jsonl"), "--steps", "3",
             "--batch-size", "4", "--budget", "2", "--lr", "1e-3", "--warmup-steps", "1", "--eval-every", "1",
             "--save-every", "3", "--eval-fraction", "0.2", "--eval-rows", "8", "--no-resume", "--shuffle-buffer",
             "8"]  # fmt: skip
    # --grad-accum 4 in one process, 2 in each of two: micro-batches of one pair in both, so that the routers'
    # load-balancing loss (not additive over rows) is taken over the same rows
    main(["vrpo", *flags, "--grad-accum", "4", "--run-dir", str(vrpo_files / "moe-one")])
    flags += ["--grad-accum", "2", "--run-dir", str(vrpo_files / "moe-fsdp")]
    launch_fsdp("vrpo", flags, wrap="GenjoMoeBlock")
    one, fsdp = curve(vrpo_files / "moe-one"), curve(vrpo_files / "moe-fsdp")
    assert [r["step"] for r in one] == [r["step"] for r in fsdp] == [1, 2, 3]
    # step 1: policy = reference, computed alike (fp32 both), so the loss is log 2 exactly, as in one process
    assert fsdp[0]["loss"] == one[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    for a, b in zip(one, fsdp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["router_loss"] == pytest.approx(a["router_loss"], rel=1e-4)
        assert b["pref_loss"] == pytest.approx(a["pref_loss"], rel=1e-4)
        assert b["pref_margin"] == pytest.approx(a["pref_margin"], abs=1e-5)
        assert b["pref_accuracy"] == a["pref_accuracy"]
