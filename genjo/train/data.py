"""Global training batches: the synthetic tiny world (a function of seed and step) or JSON-lines files.

A data source has the interface of TinyWorldData: ``batch(step)`` -> (input_ids (b, L) int64, prompt_lengths
(b,) int64 for SFT rows or None for pre-training rows), ``eval_batches()`` (the validation set, see
FileData.eval_batches), and ``state_dict()`` / ``load_state_dict()`` (the read position, saved for --resume).
Every process builds the same global batch and trains on its own slice of rows.
"""

import random
from collections.abc import Callable, Iterator
from typing import Optional

import torch

from .. import tinyworld
from ..chat_format import user_turn_ids
from . import files
from .args import TrainArgs


def step_rng(args: TrainArgs, step: int) -> random.Random:
    """The random numbers of a step's batch (not hash(): that is salted per process)."""
    return random.Random(f"{args.stage}:{args.seed}:{step}")


def document_separator(tokenizer, packing: str = "eod") -> list[int]:
    """The ids between two packed documents: [EOS], or nothing under packing "concat"."""
    return [] if packing == "concat" else [tokenizer.eos_token_id]


def document_attention_mask(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document-level attention of packed rows: (b, 1, L, L) bool, True where query and key share a document.

    input_ids: (b, L) int64, documents joined by EOS (each document ends with its EOS; a row may start or end
    inside one). Passed to the model as ``attention_bias``, it hides every other document of the row.
    """
    ends = input_ids == eos_id
    document = torch.zeros_like(input_ids)
    document[:, 1:] = ends[:, :-1].long().cumsum(1)  # the token after an EOS starts the next document
    return (document[:, :, None] == document[:, None, :])[:, None]


def tiny_world_documents(tokenizer, seed: int) -> Iterator[list[int]]:
    """Endless token ids of the tiny world's plain-text sentences, one list per sentence."""
    for sentence in tinyworld.pretraining_documents(seed):
        yield tokenizer(sentence, add_special_tokens=False)["input_ids"]


def packed_rows(
    rng: random.Random,
    tokenizer,
    n: int,
    length: int,
    packing: str = "eod",
    documents: Optional[Callable[[int], Iterator[list[int]]]] = None,
) -> list[list[int]]:
    """n rows of `length` tokens cut from documents joined by EOS (by nothing under "concat").

    documents: seed -> endless token-id lists, one per document; default the tiny world's sentences.
    """
    separator = document_separator(tokenizer, packing)
    rows = []
    for _ in range(n):
        seed = rng.getrandbits(63)
        source = documents(seed) if documents is not None else tiny_world_documents(tokenizer, seed)
        row: list[int] = []
        while len(row) < length:
            row += next(source) + separator
        start = rng.randrange(0, len(row) - length + 1)  # not always at a sentence start
        rows.append(row[start : start + length])
    return rows


def pretrain_batch(args: TrainArgs, tokenizer, step: int) -> torch.Tensor:
    """The global pre-training batch of a step: (batch_size, L) packed sentences (args.packing)."""
    rng = step_rng(args, step)
    batch = torch.tensor(packed_rows(rng, tokenizer, args.batch_size, args.seq_len, args.packing), dtype=torch.long)
    if rng.random() < args.crop_prob:
        batch = batch[:, : rng.randint(1, args.seq_len)]
    return batch


def sft_example(tokenizer, problem: tinyworld.Problem) -> files.Pair:
    """Prompt ids (chat template with generation prompt) and answer ids (+ <|eot_id|>)."""
    answer = tokenizer(problem.answer, add_special_tokens=False)["input_ids"]
    return user_turn_ids(tokenizer, problem.question), answer + [tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def sft_batch(args: TrainArgs, tokenizer, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global SFT batch of a step: input ids (b, L) right-padded with EOS, prompt lengths (b,)."""
    rng = step_rng(args, step)
    families = list(args.family_weights)
    weights = [args.family_weights[f] for f in families]
    examples = [
        sft_example(tokenizer, tinyworld.sample_problem(rng, rng.choices(families, weights)[0], "train"))
        for _ in range(args.batch_size)
    ]
    rows, prompt_lengths = padded_sft_rows(args, rng, examples, tokenizer.eos_token_id)
    # Plain text keeps what pre-training taught (e.g. the capitals that are never asked in chat form);
    # with prompt length 0 the SFT loss of such a row is the pre-training loss.
    n_plain = round(args.sft_plain_text * args.batch_size)
    if n_plain:
        rows[-n_plain:] = packed_rows(rng, tokenizer, n_plain, len(rows[0]))
        prompt_lengths[-n_plain:] = [0] * n_plain
    return torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths)


def padded_sft_rows(args: TrainArgs, rng: random.Random, examples, eos: int) -> tuple[list, list]:
    """Rows prompt + answer + EOS padding, all of one length, and the prompt lengths.

    The length is the longest example plus 0-8 tokens, or (with probability sft_long_pad_prob) a random
    length up to sft_max_len, so that the model learns to fill long canvases with EOS.
    """
    length = max(len(p) + len(a) for p, a in examples)
    if rng.random() < args.sft_long_pad_prob:
        length = rng.randint(length, max(length, args.sft_max_len))
    else:
        length += rng.randint(0, 8)
    rows = [p + a + [eos] * (length - len(p) - len(a)) for p, a in examples]
    return rows, [len(p) for p, _ in examples]


class StepData:
    """A data source for ``train(args, data=...)`` whose global batch is a function of the step alone (nothing to
    save for --resume): ``batches(step)`` returns what ``batch`` must, (input_ids, prompt_lengths or None) and
    optionally the rows' attention_bias. The reversal and context-extension experiments train this way."""

    def __init__(self, batches):
        self.batches = batches

    def batch(self, step: int):
        return self.batches(step)

    def eval_batches(self) -> list:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TinyWorldData(StepData):
    """The synthetic tiny world: each global batch is a function of (seed, step), nothing to save."""

    def __init__(self, args: TrainArgs, tokenizer):
        self.args, self.tokenizer = args, tokenizer

    def batch(self, step: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.args.stage == "pretrain":
            return pretrain_batch(self.args, self.tokenizer, step), None
        return sft_batch(self.args, self.tokenizer, step)


class FileData:
    """Global batches read from JSON-lines files (genjo/train/files.py), in order; the read position is saved.

    pretrain: (batch_size, seq_len) rows packed from documents joined by EOS (args.packing), cropped to a random length
    with probability crop_prob. sft: prompt + answer + EOS padding rows and their prompt lengths.
    """

    def __init__(self, args: TrainArgs, tokenizer):
        self.args, self.tokenizer = args, tokenizer
        key = "text" if args.stage == "pretrain" else "messages"
        paths = files.data_files(args.data)
        fraction = 0.0 if args.eval_data else args.eval_fraction
        train_stream = files.JsonlStream(paths, key, keep=lambda line: not files.is_held_out(line, fraction),
                                         shuffle_buffer=args.shuffle_buffer, seed=args.seed)  # fmt: skip
        if args.eval_data:
            eval_stream = files.JsonlStream(files.data_files(args.eval_data), key, loop=False)
        elif fraction > 0:
            eval_stream = files.JsonlStream(paths, key, keep=lambda line: files.is_held_out(line, fraction), loop=False)
        else:
            eval_stream = None
        if args.stage == "pretrain":
            separator = document_separator(tokenizer, args.packing)
            self.reader = files.PackedRows(train_stream, tokenizer, args.seq_len, separator)
            self.eval_reader = eval_stream and files.PackedRows(eval_stream, tokenizer, args.seq_len, separator)
        else:
            self.reader = files.ChatPairs(train_stream, tokenizer, args.sft_max_len, args.sft_turns, args.seed)
            self.eval_reader = eval_stream and files.ChatPairs(eval_stream, tokenizer, args.sft_max_len, "all")
        self._eval_batches = None

    def batch(self, step: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        rng = step_rng(self.args, step)
        if self.args.stage == "pretrain":
            batch = torch.tensor(self.reader.rows(self.args.batch_size), dtype=torch.long)
            if rng.random() < self.args.crop_prob:
                batch = batch[:, : rng.randint(1, self.args.seq_len)]
            return batch, None
        rows, prompt_lengths = padded_sft_rows(self.args, rng, self.reader.pairs(self.args.batch_size),
                                               self.tokenizer.eos_token_id)  # fmt: skip
        return torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths)

    def eval_batches(self) -> list[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
        """The validation set as global batches of batch_size rows: (input_ids, prompt_lengths, weights).

        The last batch is filled up with copies of a row of weight 0, so that every process gets the
        same number of rows whatever the number of processes.
        """
        if self.eval_reader is None:
            return []
        if self._eval_batches is None:
            self._eval_batches = self._read_eval_batches()
        return self._eval_batches

    def _read_eval_batches(self) -> list:
        n, size, eos = self.args.eval_rows, self.args.batch_size, self.tokenizer.eos_token_id
        if self.args.stage == "pretrain":
            examples = [([], row) for row in self.eval_reader.rows(n)]
        else:
            examples = self.eval_reader.pairs(n)
        batches = []
        for start in range(0, len(examples), size):
            chunk = examples[start : start + size]
            weights = [1.0] * len(chunk) + [0.0] * (size - len(chunk))
            chunk = chunk + [chunk[0]] * (size - len(chunk))
            length = max(len(p) + len(a) for p, a in chunk)
            rows = [p + a + [eos] * (length - len(p) - len(a)) for p, a in chunk]
            prompt_lengths = torch.tensor([len(p) for p, _ in chunk]) if self.args.stage == "sft" else None
            batches.append((torch.tensor(rows, dtype=torch.long), prompt_lengths, torch.tensor(weights)))
        return batches

    def state_dict(self) -> dict:
        return self.reader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state)


def preference_rows(triples: list, eos: int, weights: Optional[list] = None) -> tuple[torch.Tensor, ...]:
    """A batch of P preference pairs as tensors: chosen (P, L), rejected (P, L), prompt_lengths (P,), lengths (P,).

    Each pair's two rows are prompt + answer, EOS-padded to the same length (prompt + the longer answer), as the
    rows of an SFT batch are; that length is lengths[i]. Columns from lengths[i] on are batch padding (EOS ids,
    hidden from attention by the estimator). With weights, a fifth tensor (P,) fp32.
    """
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in triples]
    width = max(lengths)
    chosen = [p + c + [eos] * (width - len(p) - len(c)) for p, c, _ in triples]
    rejected = [p + r + [eos] * (width - len(p) - len(r)) for p, _, r in triples]
    out = (torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long),
           torch.tensor([len(p) for p, _, _ in triples]), torch.tensor(lengths))  # fmt: skip
    return out if weights is None else (*out, torch.tensor(weights, dtype=torch.float32))


class PreferenceData:
    """Global batches of preference pairs read from JSON-lines files (``{"messages", "chosen", "rejected"}``).

    ``batch(step)`` -> preference_rows of batch_size pairs. The held-out share (--eval-fraction, or --eval-data)
    gives ``eval_batches()``: global batches of preference_rows with weights (filler pairs of weight 0, so that
    every process gets the same number). Every line of the files is checked before training starts.
    """

    def __init__(self, args: TrainArgs, tokenizer):
        self.args, self.tokenizer = args, tokenizer
        paths = files.data_files(args.data)
        files.check_preference_files(paths)
        if args.eval_data:
            files.check_preference_files(files.data_files(args.eval_data))
        fraction = 0.0 if args.eval_data else args.eval_fraction
        train_stream = files.JsonlStream(paths, "messages", keep=lambda line: not files.is_held_out(line, fraction),
                                         shuffle_buffer=args.shuffle_buffer, seed=args.seed)  # fmt: skip
        if args.eval_data:
            eval_stream = files.JsonlStream(files.data_files(args.eval_data), "messages", loop=False)
        elif fraction > 0:
            eval_stream = files.JsonlStream(paths, "messages", keep=lambda line: files.is_held_out(line, fraction),
                                            loop=False)  # fmt: skip
        else:
            eval_stream = None
        self.reader = files.PreferencePairs(train_stream, tokenizer, args.sft_max_len)
        self.eval_reader = eval_stream and files.PreferencePairs(eval_stream, tokenizer, args.sft_max_len)
        self._eval_batches = None

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        return preference_rows(self.reader.triples(self.args.batch_size), self.tokenizer.eos_token_id)

    def eval_batches(self) -> list[tuple[torch.Tensor, ...]]:
        if self.eval_reader is None:
            return []
        if self._eval_batches is None:
            triples, size = self.eval_reader.triples(self.args.eval_rows), self.args.batch_size
            self._eval_batches = []
            for start in range(0, len(triples), size):
                chunk = triples[start : start + size]
                weights = [1.0] * len(chunk) + [0.0] * (size - len(chunk))
                chunk = chunk + [chunk[0]] * (size - len(chunk))
                self._eval_batches.append(preference_rows(chunk, self.tokenizer.eos_token_id, weights))
        return self._eval_batches

    def state_dict(self) -> dict:
        return self.reader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state)


def row_attention(args: TrainArgs, input_ids: torch.Tensor, eos_id: int):
    """The attention_bias of a batch's rows: document masks for pre-training under packing "document", else None."""
    if args.stage == "pretrain" and args.packing == "document":
        return document_attention_mask(input_ids, eos_id)
    return None


def training_data(args: TrainArgs, tokenizer):
    """The data source of a run: preference pairs for vrpo, your files with --data, else the tiny world."""
    if args.stage == "vrpo":
        return PreferenceData(args, tokenizer)
    return FileData(args, tokenizer) if args.data else TinyWorldData(args, tokenizer)
