"""Multi-turn chat with a Genjo instruct model in the terminal.

    python chat.py                      # the embedded tiny instruct model, with its own sampler settings
    python chat.py --model PATH --gen-length 64 --steps 64

Each turn renders the new user message with the chat template, appends it to the conversation so far
(keeping a single BOS), and samples the reply with ``generate()``. History policy (the one of
``genjo.chat_format``, also the app's): earlier turns are sent to a multi-turn model; a single-turn model
(the embedded tiny ones) gets each question alone, since a second question in the same conversation gets a
garbled answer from it. ``--multi-turn`` / ``--no-multi-turn`` choose; the policy is stated at start-up.
The conversation the model sees is
the whole previous canvas with the EOS padding removed from the generated part only, so every reply
ends with ``<|eot_id|>`` and the next turn reads ``...<|eot_id|><|start_header_id|>user...``. What the
user types is tokenized as plain text: typing ``<|eot_id|>`` or ``<|mdm_mask|>`` gives those characters,
never the special tokens.

Sampler flags left unset take the checkpoint's own settings (config.json ``sampler_defaults``), else the
fallbacks of ``genjo.settings``: 128 answer tokens, 128 steps, one block of 128, greedy, low_confidence,
no guidance. Bad flags, an unknown ``--device`` or a ``--model`` that does not load are reported in one
line before the first question.

Commands: ``/quit`` (or EOF) ends the chat with exit status 0, ``/reset`` forgets the conversation,
``/history`` prints the conversation exactly as the model reads it (special tokens included); any other
``/word`` lists the commands instead of being sent to the model.
Ctrl-C while an answer is being generated cancels that answer and returns to the prompt with the
conversation unchanged; Ctrl-C at the prompt ends the chat with exit status 130 (128 + SIGINT).
"""

import argparse
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from genjo.chat_format import is_single_turn, user_turn_ids
from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.sampling import check_canvas, check_prompt, check_sampler_settings, generate
from genjo.settings import CORE_SETTINGS, FALLBACKS, SETTINGS, add_sampler_arguments, resolve_sampler_settings

BANNER_WIDTH = 66
RULE_WIDTH = 71
PROMPT = "Enter your question: "
GOODBYE = "Goodbye!"
HELP = (
    "Commands: /quit to exit, /reset to start a new conversation, /history to show what the model reads. "
    "Ctrl-C cancels an answer."
)
THINKING = "(answering; Ctrl-C cancels)"
CANCELLED = "(answer cancelled; the conversation is unchanged)"
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by Ctrl-C (128 + SIGINT)
# The sampler flags chat.py offers: one answer at a time, so the settings of the answer's length and schedule.
CHAT_SETTINGS = CORE_SETTINGS


@dataclass
class ChatSession:
    """A conversation: the BOS and one token segment per finished turn (user message + reply).

    The prompt of a new turn is ``[BOS] + turn_1 + ... + turn_n + new_user_turn``: the previous canvas
    (prompt and answer) with the answer's EOS padding removed, plus the new turn's ids minus their BOS.
    Keeping the turns apart lets the oldest ones be dropped when the conversation outgrows the model.
    """

    model: object
    tokenizer: object
    gen_length: int = FALLBACKS["gen_length"]
    steps: int = FALLBACKS["steps"]
    block_length: int = FALLBACKS["block_length"]
    temperature: float = FALLBACKS["temperature"]
    cfg_scale: float = FALLBACKS["cfg_scale"]
    remasking: str = FALLBACKS["remasking"]
    multi_turn: bool = True  # send earlier turns with each question (False: each question alone)
    bos: list[int] = field(default_factory=list)  # the BOS (taken from the first turn's ids)
    turns: list[list[int]] = field(default_factory=list)  # finished turns, without the BOS

    @property
    def max_length(self) -> Optional[int]:
        return getattr(getattr(self.model, "config", None), "max_sequence_length", None)

    @property
    def settings(self) -> dict:
        """The generate() keyword arguments of every answer: {name: value} of CHAT_SETTINGS."""
        return {name: getattr(self, name) for name in CHAT_SETTINGS}

    def reset(self) -> None:
        """Forget the conversation."""
        self.turns.clear()

    def check_settings(self) -> None:
        """ValueError (naming the setting) unless generate() accepts these settings for a one-question chat."""
        probe = torch.tensor([user_turn_ids(self.tokenizer, "")], dtype=torch.long)  # (1, L)
        check_prompt(self.model, probe)
        check_sampler_settings(self.model, **self.settings)
        check_canvas(self.model, probe, None, self.gen_length, None)

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
        kept = list(self.turns) if self.multi_turn else []
        while kept and self.max_length is not None:
            if len(self.history_ids(kept)) + len(ids) - 1 + self.gen_length <= self.max_length:
                break
            kept.pop(0)
        prompt = self.history_ids(kept) + ids[1:] if kept else ids
        return prompt, kept

    def ask(self, question: str) -> tuple[str, int]:
        """Answer a question in the context of the conversation; returns (reply, oldest turns dropped).

        The finished turn (user message + reply with the EOS padding removed) joins the history in one
        assignment at the very end, so an error (e.g. ValueError from generate) or a Ctrl-C during the
        generation leaves the history exactly as it was.
        """
        prompt, kept = self.build_prompt(question)
        device = getattr(self.model, "device", None)
        ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, L)
        out = generate(self.model, ids, **self.settings)
        answer_ids = out[0, len(prompt) :].tolist()  # (gen_length,)
        reply = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        new_turn = prompt[len(self.history_ids(kept)) :] + [t for t in answer_ids if t != eos]
        if not kept:
            new_turn = new_turn[len(self.bos) :]  # the BOS is kept apart, in self.bos
        dropped = len(self.turns) - len(kept) if self.multi_turn else 0
        self.turns = kept + [new_turn]
        return reply, dropped


def history_line(multi_turn: bool) -> str:
    """The start-up line that states the history policy and the flag that changes it."""
    if multi_turn:
        return "Conversation: earlier turns are sent with each question (--no-multi-turn sends each alone)."
    return ("Conversation: each question is sent alone, the model is single-turn (--multi-turn sends the whole "
            "conversation).")  # fmt: skip


def banner(gen_length: int, steps: int) -> str:
    """The three-line banner: a rule of 66 stars, the answer length and steps, the rule again."""
    middle = f"**  Answer Length: {gen_length}  |  Sampling Steps: {steps}  **"
    return "\n".join(["*" * BANNER_WIDTH, middle, "*" * BANNER_WIDTH])


def chat_loop(session: ChatSession, input_fn=input, print_fn=print) -> int:
    """Read questions until /quit, EOF or Ctrl-C at the prompt; print each reply followed by a rule.

    Ctrl-C during an answer cancels it (the history is unchanged) and asks for the next question.
    Returns the exit status: 0 after /quit or EOF, EXIT_INTERRUPTED (130) after Ctrl-C at the prompt.
    """
    print_fn(banner(session.gen_length, session.steps))
    print_fn(history_line(session.multi_turn))
    print_fn(HELP)
    while True:
        try:
            question = input_fn(PROMPT).strip()
        except (EOFError, KeyboardInterrupt) as end:
            print_fn("")
            print_fn(GOODBYE)
            return EXIT_INTERRUPTED if isinstance(end, KeyboardInterrupt) else 0
        if not question:
            continue
        if question == "/quit":
            print_fn(GOODBYE)
            return 0
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
        if question.startswith("/") and " " not in question:
            print_fn(f"Unknown command {question}. {HELP}")
            continue
        try:
            print_fn(THINKING)  # inside the try: a Ctrl-C once this line is out cancels the answer
            reply, dropped = session.ask(question)
        except KeyboardInterrupt:
            print_fn(CANCELLED)
            continue
        except ValueError as error:
            print_fn(f"Error: {error}")
            continue
        if dropped:
            print_fn(f"(conversation too long for the model: dropped the {dropped} oldest turn(s))")
        print_fn(f"Bot's reply: {reply}")
        print_fn("-" * RULE_WIDTH)


def check_device(name: Optional[str]) -> None:
    """ValueError unless ``name`` (a --device value; None = automatic) names a device this machine has."""
    if name is None:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name; use cpu, cuda, cuda:1, mps, ...") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = _one_line(error).split(". ")[0].rstrip(".")
        raise ValueError(f"--device {name!r} is not available here ({reason}); use --device cpu.") from None


def build_parser() -> argparse.ArgumentParser:
    parser = add_model_arguments(
        argparse.ArgumentParser(prog="chat.py", description="Chat with a Genjo instruct model.")
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of torch's RNG, for temperature > 0 or random remasking (default: none, unseeded)",
    )
    parser.add_argument(
        "--multi-turn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send earlier turns with each question (default: yes, except for single-turn models such as the "
        "embedded tiny one)",
    )
    return add_sampler_arguments(parser, names=CHAT_SETTINGS)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv=None) -> int:
    """Parse the flags, load the model, check the settings, then chat. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_device(args.device)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    try:
        model, tokenizer = load_from_args(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # any load failure (missing folder, bad hub id, broken files) is one line
        parser.exit(1, f"{parser.prog}: error: cannot load --model {args.model}: {_one_line(error)}\n")
    multi_turn = not is_single_turn(tokenizer) if args.multi_turn is None else args.multi_turn
    settings = resolve_sampler_settings(args, model, names=CHAT_SETTINGS)
    session = ChatSession(model, tokenizer, multi_turn=multi_turn, **settings)
    try:
        session.check_settings()
    except ValueError as error:
        shown = ", ".join(f"{SETTINGS[name].flag} {value}" for name, value in session.settings.items())
        parser.error(f"bad sampler settings ({shown}): {error}")
    try:
        return chat_loop(session)
    except KeyboardInterrupt:  # Ctrl-C between a question's steps (e.g. while printing)
        print("\n" + GOODBYE)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run_command(main))
