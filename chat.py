"""Multi-turn chat with a Genjo instruct model in the terminal.

    python chat.py                      # the embedded tiny instruct model
    python chat.py --model PATH --gen-length 64 --steps 64

Each turn renders the new user message with the chat template, appends it to the conversation so far
(keeping a single BOS), and samples the reply with ``generate()``. The conversation the model sees is
the whole previous canvas with the EOS padding removed from the generated part only, so every reply
ends with ``<|eot_id|>`` and the next turn reads ``...<|eot_id|><|start_header_id|>user...``.

Commands: ``/quit`` (or EOF / Ctrl-C) ends the chat, ``/reset`` forgets the conversation, ``/history``
prints the conversation exactly as the model reads it (special tokens included).
"""

import argparse
from dataclasses import dataclass, field
from typing import Optional

import torch

from generate import REMASKING, generate
from genjo.loading import add_model_arguments, load_from_args

BANNER_WIDTH = 66
RULE_WIDTH = 71
PROMPT = "Enter your question: "
GOODBYE = "Goodbye!"
HELP = "Commands: /quit to exit, /reset to start a new conversation, /history to show what the model reads."


def user_turn_ids(tokenizer, question: str) -> list[int]:
    """Token ids of one user message plus the assistant header, as the chat template renders it.

    Starts with the BOS: ``<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{question}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n``.
    """
    messages = [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class ChatSession:
    """A conversation: the BOS and one token segment per finished turn (user message + reply).

    The prompt of a new turn is ``[BOS] + turn_1 + ... + turn_n + new_user_turn``, which is the SPEC §5
    history (previous canvas minus the generated EOS padding) plus the new turn's ids minus their BOS.
    Keeping the turns apart lets the oldest ones be dropped when the conversation outgrows the model.
    """

    model: object
    tokenizer: object
    gen_length: int = 128
    steps: int = 128
    block_length: int = 32
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    bos: list[int] = field(default_factory=list)  # the BOS (taken from the first turn's ids)
    turns: list[list[int]] = field(default_factory=list)  # finished turns, without the BOS

    @property
    def max_length(self) -> Optional[int]:
        return getattr(getattr(self.model, "config", None), "max_sequence_length", None)

    def reset(self) -> None:
        """Forget the conversation."""
        self.turns.clear()

    def history_ids(self, turns: Optional[list[list[int]]] = None) -> list[int]:
        """The conversation as the model reads it: BOS + every finished turn ([] when there is none)."""
        turns = self.turns if turns is None else turns
        return self.bos + [t for turn in turns for t in turn] if turns else []

    def build_prompt(self, question: str) -> tuple[list[int], list[list[int]]]:
        """Prompt ids for a new question, and the finished turns that prompt keeps.

        The oldest turns are left out while prompt + gen_length would exceed the model's
        max_sequence_length; the new question itself is never cut. Nothing is changed in the session.
        """
        ids = user_turn_ids(self.tokenizer, question)
        self.bos = ids[:1]
        kept = list(self.turns)
        while kept and self.max_length is not None:
            if len(self.history_ids(kept)) + len(ids) - 1 + self.gen_length <= self.max_length:
                break
            kept.pop(0)
        prompt = self.history_ids(kept) + ids[1:] if kept else ids
        return prompt, kept

    def ask(self, question: str) -> tuple[str, int]:
        """Answer a question in the context of the conversation; returns (reply, oldest turns dropped).

        The finished turn (user message + reply with the EOS padding removed) joins the history. On an
        error (e.g. ValueError from generate) the history is left exactly as it was.
        """
        prompt, kept = self.build_prompt(question)
        device = getattr(self.model, "device", None)
        ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, L)
        out = generate(self.model, ids, steps=self.steps, gen_length=self.gen_length, block_length=self.block_length,
                       temperature=self.temperature, cfg_scale=self.cfg_scale, remasking=self.remasking)  # fmt: skip
        answer_ids = out[0, len(prompt) :].tolist()  # (gen_length,)
        reply = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        new_turn = prompt[len(self.history_ids(kept)) :] + [t for t in answer_ids if t != eos]
        if not kept:
            new_turn = new_turn[len(self.bos) :]  # the BOS is kept apart, in self.bos
        dropped = len(self.turns) - len(kept)
        self.turns = kept + [new_turn]
        return reply, dropped


def banner(gen_length: int, steps: int) -> str:
    """The three-line banner of SPEC §5."""
    middle = f"**  Answer Length: {gen_length}  |  Sampling Steps: {steps}  **"
    return "\n".join(["*" * BANNER_WIDTH, middle, "*" * BANNER_WIDTH])


def chat_loop(session: ChatSession, input_fn=input, print_fn=print) -> None:
    """Read questions until /quit, EOF or Ctrl-C; print each reply followed by a rule."""
    print_fn(banner(session.gen_length, session.steps))
    print_fn(HELP)
    try:
        while True:
            question = input_fn(PROMPT).strip()
            if not question:
                continue
            if question == "/quit":
                break
            if question == "/reset":
                session.reset()
                print_fn("(conversation reset)")
                continue
            if question == "/history":
                ids = session.history_ids()
                text = session.tokenizer.decode(ids, skip_special_tokens=False) if ids else "(empty)"
                print_fn(f"History ({len(ids)} tokens):\n{text}")
                print_fn("-" * RULE_WIDTH)
                continue
            try:
                reply, dropped = session.ask(question)
            except ValueError as error:
                print_fn(f"Error: {error}")
                continue
            if dropped:
                print_fn(f"(conversation too long for the model: dropped the {dropped} oldest turn(s))")
            print_fn(f"Bot's reply: {reply}")
            print_fn("-" * RULE_WIDTH)
    except (EOFError, KeyboardInterrupt):
        print_fn("")
    print_fn(GOODBYE)


def main(argv=None) -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description="Chat with a Genjo instruct model."))
    parser.add_argument("--gen-length", type=int, default=128, help="answer tokens per turn (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=128, help="sampling steps per turn (default: %(default)s)")
    parser.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    parser.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance scale (default: %(default)s)")
    parser.add_argument("--remasking", choices=REMASKING, default="low_confidence")
    parser.add_argument("--seed", type=int, default=None, help="seed torch's RNG (for temperature > 0 or random)")
    args = parser.parse_args(argv)

    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = load_from_args(args)
    session = ChatSession(model, tokenizer, gen_length=args.gen_length, steps=args.steps,
                          block_length=args.block_length, temperature=args.temperature, cfg_scale=args.cfg,
                          remasking=args.remasking)  # fmt: skip
    chat_loop(session)


if __name__ == "__main__":
    main()
