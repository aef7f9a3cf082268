"""The Monte-Carlo likelihood estimator."""

import statistics

import pytest
import torch
from conftest import MASK

from get_log_likelihood import get_log_likelihood, get_log_likelihoods
from get_log_likelihood import stratified_masking as forward_process

PROMPT = torch.tensor([0, 7, 8, 9, 10])
ANSWER = torch.tensor([11, 12, 13, 14, 15, 16])


def test_forward_process_masks_exact_stratified_counts_and_never_the_prompt():
    torch.manual_seed(0)
    seq = torch.cat([PROMPT, ANSWER])[None].repeat(4, 1)
    prompt_index = torch.arange(seq.shape[1]) < len(PROMPT)
    for _ in range(20):
        noisy, p_mask = forward_process(seq, prompt_index, MASK)
        assert torch.equal(noisy[:, : len(PROMPT)], seq[:, : len(PROMPT)])
        counts = (noisy == MASK).sum(1)
        assert ((counts >= 1) & (counts <= len(ANSWER))).all()
        torch.testing.assert_close(p_mask[:, 0], counts.float() / len(ANSWER))
        # stratified: the counts are spread over 1..T, rows T/b apart (mod T)
        gaps = sorted(((counts - counts[0]) % len(ANSWER)).tolist())
        assert len(set(gaps)) == 4
        assert torch.equal(noisy[noisy != MASK], seq[noisy != MASK])


def test_one_token_answer_with_one_sample_is_the_exact_log_probability(model):
    answer = torch.tensor([23])
    expected = torch.log_softmax(model(torch.cat([PROMPT, torch.tensor([MASK])])[None]).logits[0, -1], -1)[23]
    assert get_log_likelihood(model, PROMPT, answer, mc_num=1) == pytest.approx(expected.item(), abs=1e-5)
    # cfg_scale changes it exactly as the guidance formula says
    uncond = torch.log_softmax(model(torch.full((1, 6), MASK)).logits[0, -1], -1)
    cond = torch.log_softmax(model(torch.cat([PROMPT, torch.tensor([MASK])])[None]).logits[0, -1], -1)
    guided = torch.log_softmax(uncond + 2.0 * (cond - uncond), -1)[23]
    assert get_log_likelihood(model, PROMPT, answer, mc_num=1, cfg_scale=1.0) == pytest.approx(guided.item(), abs=1e-4)


def test_spread_shrinks_as_mc_num_grows(model):
    def spread(mc_num):
        estimates = []
        for seed in range(12):
            torch.manual_seed(seed)
            estimates.append(get_log_likelihood(model, PROMPT, ANSWER, mc_num=mc_num, batch_size=4))
        return statistics.stdev(estimates), statistics.mean(estimates)

    small, mean_small = spread(4)
    large, mean_large = spread(64)
    assert large < small / 2, (small, large)
    assert abs(mean_large - mean_small) < 3 * small  # same expectation


def test_batch_size_is_clamped_and_must_divide_mc_num(model):
    torch.manual_seed(0)
    assert isinstance(get_log_likelihood(model, PROMPT, ANSWER, mc_num=2, batch_size=16), float)
    with pytest.raises(ValueError, match="must divide mc_num"):
        get_log_likelihood(model, PROMPT, ANSWER, mc_num=12, batch_size=8)


@pytest.mark.parametrize(
    "answer,kwargs,message",
    [
        (torch.tensor([], dtype=torch.long), {}, "answer is empty"),
        (torch.tensor([4, MASK]), {}, "mask id"),
        (ANSWER, {"mc_num": 0}, "mc_num"),
        (ANSWER, {"cfg_scale": -1.0}, "cfg_scale"),
        (torch.arange(3, 100), {}, "max_sequence_length"),
        (ANSWER[None].repeat(2, 1), {}, "1-D"),
    ],
)
def test_bad_input_raises_value_error(model, answer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_log_likelihood(model, PROMPT, answer, **kwargs)


def test_head_at_masked_slots_only_gives_the_same_estimate(model):
    class FullHead(torch.nn.Module):  # the same model without the logits_mask shortcut
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, ids, **kwargs):
            return self.inner(ids)

    for cfg in (0.0, 1.0):
        fast = get_log_likelihood(model, PROMPT, ANSWER, mc_num=8, batch_size=4, cfg_scale=cfg,
                                  generator=torch.Generator().manual_seed(3))  # fmt: skip
        slow = get_log_likelihood(FullHead(model), PROMPT, ANSWER, mc_num=8, batch_size=4, cfg_scale=cfg,
                                  generator=torch.Generator().manual_seed(3))  # fmt: skip
        assert fast == pytest.approx(slow, rel=1e-5, abs=1e-5)


def test_single_token_shortcut_equals_the_monte_carlo_path(model):
    answer = torch.tensor([31])
    exact = get_log_likelihood(model, PROMPT, answer, mc_num=16, batch_size=4)
    sampled = get_log_likelihood(model, PROMPT, answer, mc_num=16, batch_size=4, exact_single_token=False)
    assert exact == pytest.approx(sampled, abs=1e-4)


def test_common_random_numbers_are_unbiased_and_reduce_the_variance_of_differences(model):
    """Two choices of one question scored with the same noise: same expectation, less noisy difference."""
    choice_a, choice_b = ANSWER, torch.tensor([11, 12, 13, 40, 15, 16])
    shared, independent, means_shared, means_indep = [], [], [], []
    for seed in range(16):
        kwargs = dict(mc_num=8, batch_size=8)
        a = get_log_likelihood(model, PROMPT, choice_a, generator=torch.Generator().manual_seed(seed), **kwargs)
        b = get_log_likelihood(model, PROMPT, choice_b, generator=torch.Generator().manual_seed(seed), **kwargs)
        b_indep = get_log_likelihood(model, PROMPT, choice_b, generator=torch.Generator().manual_seed(1000 + seed),
                                     **kwargs)  # fmt: skip
        shared.append(a - b)
        independent.append(a - b_indep)
        means_shared.append(b)
        means_indep.append(b_indep)
    # unbiased: the CRN estimates of choice b have the same mean as independent ones (within 3 standard errors)
    se = (statistics.variance(means_shared) / 16 + statistics.variance(means_indep) / 16) ** 0.5
    assert abs(statistics.mean(means_shared) - statistics.mean(means_indep)) < 3 * se
    assert statistics.variance(shared) < statistics.variance(independent) / 2


@pytest.mark.parametrize("cfg", [0.0, 1.0])
def test_pairs_scored_together_equal_pairs_scored_alone(model, cfg):
    """Rows of pairs of different lengths share padded forwards; every estimate stays the one of its pair alone."""
    pairs = [
        (PROMPT, ANSWER),
        (PROMPT[:3], torch.tensor([11, 12])),  # shorter: padded
        (PROMPT, torch.tensor([31])),  # one token: a single exact row
        (torch.tensor([], dtype=torch.long), torch.tensor([40, 41, 42, 43, 44, 45, 46, 47])),  # no prompt, longest
    ]
    kwargs = dict(mc_num=8, batch_size=4, cfg_scale=cfg)
    together = get_log_likelihoods(model, pairs, generators=[torch.Generator().manual_seed(5) for _ in pairs],
                                   **kwargs)  # fmt: skip
    alone = [get_log_likelihood(model, p, a, generator=torch.Generator().manual_seed(5), **kwargs) for p, a in pairs]
    assert together == pytest.approx(alone, rel=1e-5, abs=1e-4)


class CountingRows(torch.nn.Module):
    """The model, recording the rows of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.supports_logits_mask, self.calls = inner, inner.config, True, []

    def forward(self, ids, **kwargs):
        self.calls.append(ids.shape[0])
        return self.inner(ids, **kwargs)


def test_pairs_scored_together_fill_shared_forwards_and_share_equal_rows(model):
    """Four 2-token choices: 2 one-slot maskings each, and one all-masked row common to all four.

    With common random numbers the 4 x 64 samples need 4 x 2 + 1 = 9 distinct rows: one forward
    (batch_size 16), and every estimate is still the one of its choice alone.
    """
    choices = [torch.tensor([11, 12]), torch.tensor([13, 14]), torch.tensor([15, 16]), torch.tensor([17, 18])]
    counting = CountingRows(model)
    kwargs = dict(mc_num=64, batch_size=16)
    pairs, generators = [(PROMPT, c) for c in choices], [torch.Generator().manual_seed(3) for _ in choices]
    together = get_log_likelihoods(counting, pairs, generators=generators, **kwargs)
    assert counting.calls == [9]
    alone = [get_log_likelihood(model, p, c, generator=torch.Generator().manual_seed(3), **kwargs) for p, c in pairs]
    assert together == pytest.approx(alone, rel=1e-5, abs=1e-5)


def test_without_deduplication_every_row_runs_batch_size_to_a_forward(model):
    counting = CountingRows(model)
    get_log_likelihoods(counting, [(PROMPT, ANSWER)] * 4, mc_num=16, batch_size=8, deduplicate=False)
    assert counting.calls == [8] * 8


def test_repeated_noisy_rows_are_run_once_with_the_same_estimate(model):
    """A 2-token answer has 3 maskings: 64 samples cost one forward of at most 3 rows, same estimate."""
    answer = torch.tensor([11, 12])
    counting = CountingRows(model)
    kwargs = dict(mc_num=64, batch_size=16)
    once = get_log_likelihood(counting, PROMPT, answer, generator=torch.Generator().manual_seed(1), **kwargs)
    assert len(counting.calls) == 1 and counting.calls[0] <= 3
    every = get_log_likelihood(model, PROMPT, answer, generator=torch.Generator().manual_seed(1), deduplicate=False,
                               **kwargs)  # fmt: skip
    assert once == pytest.approx(every, rel=1e-5, abs=1e-5)


def test_pairs_need_one_generator_each(model):
    with pytest.raises(ValueError, match="one per pair"):
        get_log_likelihoods(model, [(PROMPT, ANSWER)] * 2, generators=[torch.Generator()])
    assert get_log_likelihoods(model, []) == []


def test_command_line_ranks_the_answers_and_says_what_the_number_is(capsys):
    """The demo compares answers to one prompt the embedded base model knows: the sorted list comes first."""
    import get_log_likelihood as script

    script.main(["--mc-num", "32", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "ELBO" in lines[0] and "nats" in lines[0] and "higher = more likely" in lines[0]
    assert [line.split("'")[1] for line in lines[1:]] == [" 1 3 4 7 9.", " 1 3 4 9 7.", " 9 7 4 3 1."]
