"""Record a generation step by step, and read/write it as JSON or as a ``sample_process.txt`` log.

A trajectory holds, for each of the ``gen_length`` answer positions, its final token and the global step
(1..num_steps) at which the sampler revealed it, with the confidence it had then. Frame k of a picture
shows every token revealed by step k (frame 0: all masks).
"""

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from genjo.sampling import StepInfo, generate

FORMAT = "genjo-trajectory/1"
LOG_MASK = "<|mdm_mask|>"
LOG_BLANKS = ("\n", "<|eot_id|>", "<|endoftext|>")  # written as a space in sample_process.txt
LOG_TOKEN = re.compile(r"\*([^&]*)&?")


@dataclass
class Trajectory:
    """One answer's denoising. Lists are per answer position (length gen_length)."""

    prompt: str
    num_steps: int  # sampling steps in all (frames 0..num_steps)
    tokens: list[int]  # final token ids (-1 when unknown, e.g. parsed from a log)
    texts: list[str]  # each token decoded alone, special tokens kept
    reveal_step: list[int]  # the step (1..num_steps) that revealed the position
    confidence: list[Optional[float]]  # its confidence then (None when unknown)
    answer: str = ""  # the decoded answer, special tokens skipped
    settings: dict = field(default_factory=dict)  # sampler arguments and model name

    def __post_init__(self):
        n = len(self.texts)
        if not (len(self.tokens) == len(self.reveal_step) == len(self.confidence) == n):
            raise ValueError("tokens, texts, reveal_step and confidence must all have one entry per position.")

    @property
    def gen_length(self) -> int:
        return len(self.texts)

    def revealed(self, step: int) -> list[bool]:
        """Which positions are visible in frame ``step`` (0 = before the first step)."""
        return [s <= step for s in self.reveal_step]

    def to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, **asdict(self)}, f, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, path: str) -> "Trajectory":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"{path} is not a Genjo trajectory ({FORMAT}); record one with visualization.record.")
        return cls(**data)


def record_generation(model, tokenizer, question: str, **generate_kwargs) -> Trajectory:
    """Answer one chat question with generate() and record when each answer position was revealed.

    generate_kwargs go to generate() (steps, gen_length, block_length, temperature, remasking, ...).
    """
    from genjo.chat_format import encode_chat  # here: rendering a saved trajectory needs no transformers

    # The question is plain text: one that spells <|eot_id|> or <|mdm_mask|> stays characters.
    ids = encode_chat(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
    prompt = torch.tensor([ids], device=model.device)  # (1, L) int64
    L = prompt.shape[1]
    reveal: dict[int, tuple[int, float]] = {}
    steps_done = 0

    def on_step(info: StepInfo) -> None:
        nonlocal steps_done
        steps_done += 1
        for pos in info.committed[0, L:].nonzero().flatten().tolist():
            reveal[pos] = (steps_done, float(info.confidence[0, L + pos]))

    out = generate(model, prompt, step_callback=on_step, **generate_kwargs)
    answer_ids = out[0, L:].tolist()  # (gen_length,)
    missing = [p for p in range(len(answer_ids)) if p not in reveal]
    if missing:
        raise ValueError(f"positions {missing} were never committed; is every slot unmasked by the sampler?")
    return Trajectory(
        prompt=question,
        num_steps=steps_done,
        tokens=answer_ids,
        texts=[tokenizer.decode([t], skip_special_tokens=False) for t in answer_ids],
        reveal_step=[reveal[p][0] for p in range(len(answer_ids))],
        confidence=[reveal[p][1] for p in range(len(answer_ids))],
        answer=tokenizer.decode(answer_ids, skip_special_tokens=True),
        settings={k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, type(None)))},
    )


def log_token(text: str) -> str:
    """A token as sample_process.txt writes it: newlines and EOS/EoT become spaces."""
    for blank in LOG_BLANKS:
        text = text.replace(blank, " ")
    return text


def write_sample_process(trajectory: Trajectory, path: str) -> None:
    """The step log: one line per step, ``"{step}, "`` then ``*{token}&`` per answer position, each token
    decoded alone; a still-masked position is written ``<|mdm_mask|>``; newlines, ``<|eot_id|>`` and
    ``<|endoftext|>`` are written as a space. Parse it back with read_sample_process()."""
    with open(path, "w", encoding="utf-8") as f:
        for step in range(1, trajectory.num_steps + 1):
            shown = trajectory.revealed(step)
            cells = (f"*{log_token(t) if s else LOG_MASK}&" for t, s in zip(trajectory.texts, shown))
            f.write(f"{step}, " + "".join(cells) + "\n")


def read_sample_process(path: str, gen_length: Optional[int] = None, prompt: str = "") -> Trajectory:
    """Parse a sample_process.txt log back into a Trajectory (token ids and confidences unknown).

    Each line's tokens are padded with masks or cut to gen_length (default: the first line's count);
    a position's reveal step is the first line where it is not a mask.
    """
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path} has no steps.")
    rows = []
    for line in lines:
        step, _, body = line.partition(", ")
        rows.append((int(step), LOG_TOKEN.findall(body)))
    n = gen_length or len(rows[0][1])
    rows = [(step, (cells + [LOG_MASK] * n)[:n]) for step, cells in rows]
    num_steps = rows[-1][0]
    reveal = [next((step for step, cells in rows if cells[p] != LOG_MASK), num_steps) for p in range(n)]
    return Trajectory(prompt=prompt, num_steps=num_steps, tokens=[-1] * n, texts=rows[-1][1], reveal_step=reveal,
                      confidence=[None] * n, answer="".join(rows[-1][1]).strip())  # fmt: skip
