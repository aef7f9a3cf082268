"""Gradio demo: chat with a Genjo instruct model and watch the answer being denoised live.

    python app.py                         # http://127.0.0.1:7860, the embedded tiny instruct model
    python app.py --model PATH --port 7861 --host 0.0.0.0
    python app.py --share                 # also a public gradio.live link

The visualisation panel streams one frame per sampling step while the model works (from
``generate()``'s ``step_callback``, run in a worker thread). Every answer slot keeps its place: masked
slots show ``[MASK]``, tokens revealed by the step are coloured by their confidence, tokens revealed by
an earlier step are blue, end-of-text slots are faint ``EOS`` / ``EoT`` chips; a legend names the colours.
Word constraints (``position:word``) fix answer tokens at given positions, counted in tokens from the
start of the answer.

The conversation stays well formed whatever happens: a message is accepted only once its settings are
valid; if generation fails, the message leaves the conversation, goes back into the message box and the
error is shown as a warning; an empty answer is kept as an (empty) assistant turn, so user and assistant
turns always alternate. Text a user types that spells a special token (``<|eot_id|>``) stays plain text in
the prompt. Single-turn models (the embedded tiny ones) are sent the last question only, by default.

The model is loaded in ``main()``, so ``import app`` is cheap; ``build_demo(model, tokenizer)`` makes the
page for any loaded model. Sliders start at the checkpoint's own sampler settings where it has them.
"""

import argparse
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Optional

import torch

from genjo.sampling import REMASKING, StepInfo, generate

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MASK_TOKEN = "[MASK]"
# Visualisation categories (the legend's names) and their colours.
MASKED = "mask"
NEW_LOW, NEW_MID, NEW_HIGH = "new, confidence < 0.3", "new, 0.3 to 0.7", "new, confidence >= 0.7"
EARLIER = "revealed earlier"
CONSTRAINT = "word constraint"
END = "end of text"
COLOUR_MAP = {  # the page shows each at half opacity; END must stay (241, 241, 241) for CSS
    MASKED: "#9E9E9E",
    NEW_LOW: "#FF6666",
    NEW_MID: "#FFAA33",
    NEW_HIGH: "#66CC66",
    EARLIER: "#6699CC",
    CONSTRAINT: "#B084F5",
    END: "#F1F1F1",
}
END_NAMES = {"<|endoftext|>": "EOS", "<|eot_id|>": "EoT"}
EMPTY_ANSWER = "*(empty answer: the model wrote only end-of-text tokens)*"
# Only the page's own elements are styled: equal-width chips keep every slot in place from frame to frame.
CSS = """
#vis .textfield { display: flex; flex-wrap: wrap; gap: 4px; }
#vis .token-container { min-width: 4.6em; }
#vis .token-container > .token { display: block; width: 100%; text-align: center; white-space: pre;
  border: 1px solid #e5e7eb; }
#vis .token[style*="241, 241, 241"] { color: #a0a0a0 !important; }
#send { min-width: 6em; }
"""
TITLE = "# Genjo - Large Language Diffusion Model Demo"
PLACEHOLDER = "Type a question or pick an example, then **Send**: the answer is denoised live on the right."
CONSTRAINTS_INFO = (
    "Comma-separated position:word pairs that fix words in the answer. A position counts tokens from the "
    "start of the answer (0 = its first token); a word may take several tokens and then also fills the "
    "positions after it; words after position 0 get a leading space. Example: {example}."
)
# (min, max, default, step) of the settings sliders; the defaults give way to the checkpoint's own.
GEN_LENGTH = (16, 128, 64, 8)
STEPS = (8, 128, 32, 4)
TEMPERATURE = (0.0, 1.0, 0.0, 0.1)
CFG_SCALE = (0.0, 2.0, 0.0, 0.1)
BLOCK_LENGTH = (8, 128, 32, 8)
DELAY = (0.0, 1.0, 0.1, 0.1)

# Prompts the embedded tiny-world models answer (3-8 digits to sort, 3-6 NATO words to reverse, sums of
# 0-99, the chat-taught capitals): (message, word constraints).
TINY_EXAMPLES = [
    ("Sort: 9 3 7 1 5", ""),
    ("Reverse: alpha bravo charlie", ""),
    ("What is 12 + 30?", ""),
    ("What is the capital of France?", ""),
    ("Reverse: alpha bravo charlie", "2:delta"),
]
TINY_CONSTRAINT_EXAMPLE = (
    '"Reverse: alpha bravo charlie" with 2:delta answers "charlie delta alpha" (charlie is 2 tokens, c + harlie)'
)
GENERAL_EXAMPLES = [
    ("What is the capital of France?", ""),
    ("Lily can run 12 kilometers per hour for 4 hours. How far does she run?", ""),
    ("Write a short poem about the sea.", ""),
    ("Tell me a story.", "0:Once, 1:upon, 2:a, 3:time"),
]
GENERAL_CONSTRAINT_EXAMPLE = '"Tell me a story." with 0:Once, 1:upon, 2:a, 3:time'
TINY_VOCAB = 1024  # the tiny-world tokenizer has 512 tokens; any released large model has far more

Frame = list[tuple[str, str]]  # gen_length (text, category) pairs for the HighlightedText
History = list[list]  # [[user, reply], ...]; reply None while it is being generated, "" when empty


# ----------------------------------------------------------------------------- inputs


def parse_constraints(text: Optional[str], gen_length: Optional[int] = None) -> dict[int, str]:
    """'0:Once, 5:upon' -> {0: 'Once', 5: 'upon'}. Empty parts are ignored.

    Raises ValueError naming the part when it is not ``position:word`` with a whole-number position >= 0
    and a non-blank word, when a position is given twice, or when it lies past the answer (gen_length).
    """
    constraints = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        pos, sep, word = part.partition(":")
        pos, word = pos.strip(), word.strip()
        if not sep or not re.fullmatch(r"\d+", pos) or not word:
            raise ValueError(
                f"Word constraint {part.strip()!r} is not position:word (a whole number >= 0, a colon and a "
                "word), e.g. 2:delta."
            )
        if int(pos) in constraints:
            raise ValueError(f"Word constraint position {pos} is given twice.")
        if gen_length is not None and int(pos) >= gen_length:
            raise ValueError(
                f"Word constraint position {pos} is past the end of the answer: positions are 0 to "
                f"{gen_length - 1} (Generation Length {gen_length})."
            )
        constraints[int(pos)] = word
    return constraints


def constraint_token_ids(tokenizer, constraints: dict[int, str], gen_length: int) -> dict[int, int]:
    """Answer position -> token id. A word's tokens fill pos, pos+1, ...; after position 0 the word is
    encoded with a leading space (as words inside an answer are).

    Tokens falling past the end of the answer are dropped; later positions overwrite earlier ones. A word
    is plain text, like the message: one that spells a special token (``<|mdm_mask|>``) stays characters.
    """
    from genjo.chat_format import encode_plain  # here, so that ``import app`` stays cheap

    fixed = {}
    for pos, word in sorted(constraints.items()):
        text = word if pos == 0 else " " + word
        for offset, token in enumerate(encode_plain(tokenizer, text)):
            if pos + offset < gen_length:
                fixed[pos + offset] = token
    return fixed


def format_chat_history(history: History, multi_turn: bool = True) -> list[dict]:
    """[[user, reply], ...] -> chat-template messages. A pending reply (None) adds the user turn only; an
    empty reply ("") stays an empty assistant turn, so the roles always alternate. With multi_turn False
    only the last user message is kept (for single-turn models)."""
    if not multi_turn:
        history = history[-1:]
        return [{"role": "user", "content": history[0][0]}] if history else []
    messages = []
    for user, reply in history:
        messages.append({"role": "user", "content": user})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return messages


def check_settings(gen_length, steps, block_length, temperature, cfg_scale, remasking) -> tuple[int, int, int]:
    """Validate the settings and return (gen_length, steps, block_length) as generate() needs them.

    Lenient like the reference demo: the block is clamped to the answer and each block gets
    max(1, steps // num_blocks) steps. An answer that is not a whole number of blocks is an error here,
    because generate() has equal blocks only.
    """
    for name, value in [("Generation Length", gen_length), ("Denoising Steps", steps), ("Block Length", block_length),
                        ("Temperature", temperature), ("CFG Scale", cfg_scale)]:  # fmt: skip
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number; got {value!r}.")
    gen_length, steps, block_length = int(gen_length), int(steps), int(block_length)
    if gen_length < 1 or steps < 1 or block_length < 1:
        raise ValueError("Generation Length, Denoising Steps and Block Length must be at least 1.")
    if temperature < 0 or cfg_scale < 0:
        raise ValueError("Temperature and CFG Scale must be >= 0.")
    if remasking not in REMASKING:
        raise ValueError(f"Remasking Strategy must be one of {', '.join(REMASKING)}; got {remasking!r}.")
    block_length = min(block_length, gen_length)
    if gen_length % block_length:
        raise ValueError(f"Generation Length ({gen_length}) must be a multiple of Block Length ({block_length}).")
    num_blocks = gen_length // block_length
    return gen_length, max(1, steps // num_blocks) * num_blocks, block_length


def check_delay(delay) -> float:
    if not isinstance(delay, (int, float)) or not 0 <= delay <= 10:
        raise ValueError(f"Visualization Delay must be between 0 and 10 seconds; got {delay!r}.")
    return float(delay)


# ----------------------------------------------------------------------------- prompt


def chat_prompt_ids(tokenizer, messages: list[dict], gen_length: int, max_length: Optional[int]) -> list[int]:
    """Template ids of the conversation plus the generation prompt, dropping the oldest exchanges to fit.

    Message contents are plain text: a typed ``<|eot_id|>`` or ``<|mdm_mask|>`` stays characters."""
    from genjo.chat_format import encode_chat  # here, so that ``import app`` stays cheap

    while True:
        ids = encode_chat(tokenizer, messages)
        if max_length is None or len(ids) + gen_length <= max_length or len(messages) <= 1:
            return ids
        messages = messages[2:] if messages[0]["role"] == "user" and len(messages) > 2 else messages[1:]


# ----------------------------------------------------------------------------- frames


def confidence_category(confidence: float) -> str:
    """Category of a token revealed by the current step: red < 0.3 <= orange < 0.7 <= green."""
    if confidence < 0.3:
        return NEW_LOW
    return NEW_MID if confidence < 0.7 else NEW_HIGH


def token_label(tokenizer, token: int, added: Optional[dict] = None) -> str:
    """What a chip shows for a token: added tokens their name, shortened for EOS and EoT; a whitespace-only
    token ␣ (or ↵ for a newline) so that no chip is blank; any other token its text.
    added: tokenizer.added_tokens_decoder, when the caller has it already."""
    special = (tokenizer.added_tokens_decoder if added is None else added).get(token)
    if special is not None:
        return END_NAMES.get(str(special), str(special))
    text = tokenizer.decode([token])
    if text.strip():
        return text
    return "↵" if "\n" in text else "␣"


def make_frame(tokenizer, answer: list[int], mask_id: int, new: dict[int, float], fixed: set[int],
               end_ids: frozenset = frozenset()) -> Frame:  # fmt: skip
    """One visualisation frame of the answer: one (text, category) per slot, none dropped.

    answer: gen_length token ids (mask_id where still masked); new: position -> confidence of the tokens
    revealed by this step; fixed: constraint positions; end_ids: the end-of-text token ids (EOS, EoT),
    shown as faint chips.
    """
    frame, added = [], tokenizer.added_tokens_decoder
    for pos, token in enumerate(answer):
        if token == mask_id:
            frame.append((MASK_TOKEN, MASKED))
            continue
        text = token_label(tokenizer, token, added)
        if pos in fixed:
            category = CONSTRAINT
        elif token in end_ids:
            category = END
        else:
            category = confidence_category(new[pos]) if pos in new else EARLIER
        frame.append((text, category))
    return frame


class ConstrainedModel:
    """The model with some answer slots held at constraint tokens (generate() has no hook for them).

    Every forward sees the constraint tokens in their slots, as if they had been written into the canvas
    from the start; unconditional CFG rows (recognised by their masked BOS column) see them masked, as
    prompt. At those slots the logits are replaced by a one-hot (0 for the token, -1e4 elsewhere), so
    the sampler proposes exactly the constraint there with confidence 1 and commits it early.
    columns: (K,) canvas columns; tokens: (K,) token ids.
    """

    def __init__(self, model, columns: torch.Tensor, tokens: torch.Tensor, mask_id: int):
        self.model, self.columns, self.tokens, self.mask_id = model, columns, tokens, mask_id
        self.config = model.config
        self.device = getattr(model, "device", None)

    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
        x = input_ids.clone()  # (B, T)
        conditional = x[:, 0] != self.mask_id  # (B,)
        x[:, self.columns] = torch.where(conditional[:, None], self.tokens, self.mask_id)
        logits = self.model(x, attention_mask=attention_mask, **kwargs).logits.clone()  # (B, T, V)
        logits[:, self.columns] = -1e4
        logits[:, self.columns, self.tokens] = 0.0
        return SimpleNamespace(logits=logits)


def generate_response_with_visualization(
    model,
    tokenizer,
    device,
    messages: list[dict],
    gen_length: int = 64,
    steps: int = 32,
    constraints: Optional[dict[int, str]] = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    block_length: int = 32,
    remasking: str = "low_confidence",
    on_frame: Optional[Callable[[Frame], None]] = None,
) -> tuple[list[Frame], str]:
    """Answer the conversation with generate() and record one frame per step: (frames, final text).

    Frame 0 is all [MASK]; with constraints, frame 1 shows them; one more frame follows each step.
    on_frame, if given, receives each frame as soon as it exists (the app streams them from it).
    The oldest turns are left out of the prompt when it would not fit the model with the answer.
    """
    gen_length, steps, block_length = check_settings(gen_length, steps, block_length, temperature, cfg_scale,
                                                     remasking)  # fmt: skip
    mask_id = int(model.config.mask_token_id)
    end_ids = frozenset(
        int(i) for i in (getattr(model.config, "eos_token_id", None), getattr(model.config, "eot_token_id", None))
        if i is not None
    )  # fmt: skip
    prompt = chat_prompt_ids(tokenizer, messages, gen_length, getattr(model.config, "max_sequence_length", None))
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, L)
    L = input_ids.shape[1]
    fixed = constraint_token_ids(tokenizer, constraints or {}, gen_length)

    frames: list[Frame] = []

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if on_frame is not None:
            on_frame(frame)

    emit([(MASK_TOKEN, MASKED)] * gen_length)
    sampler_model = model
    if fixed:
        columns = torch.tensor([L + p for p in fixed], device=device)
        tokens = torch.tensor(list(fixed.values()), device=device)
        sampler_model = ConstrainedModel(model, columns, tokens, mask_id)
        answer = [fixed.get(p, mask_id) for p in range(gen_length)]
        emit(make_frame(tokenizer, answer, mask_id, {}, set(fixed), end_ids))

    def step_callback(info: StepInfo) -> None:
        answer = info.canvas[0, L:].clone()  # (gen_length,)
        for pos, token in fixed.items():
            answer[pos] = token
        committed = info.committed[0, L:].nonzero().flatten().tolist()
        new = {p: float(info.confidence[0, L + p]) for p in committed}
        emit(make_frame(tokenizer, answer.tolist(), mask_id, new, set(fixed), end_ids))

    out = generate(sampler_model, input_ids, steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=temperature, cfg_scale=cfg_scale, remasking=remasking,
                   step_callback=step_callback)  # fmt: skip
    final = tokenizer.decode(out[0, L:].tolist(), skip_special_tokens=True)
    return frames, final


def stream_frames(
    delay: float, work: Callable[[Callable[[Frame], None]], str]
) -> Iterator[tuple[Frame, Optional[str]]]:
    """Run work(on_frame) in a worker thread and yield (frame, None) as frames arrive, then (last, text).

    Frames are yielded at least ``delay`` seconds apart. An exception of the worker is re-raised here.
    """
    frames: queue.Queue = queue.Queue()
    done = object()
    result: dict = {}

    def run() -> None:
        try:
            result["text"] = work(frames.put)
        except BaseException as error:  # re-raised in the consumer
            result["error"] = error
        finally:
            frames.put(done)

    threading.Thread(target=run, daemon=True, name="genjo-generate").start()
    last, shown_at = [], 0.0
    while (frame := frames.get()) is not done:
        time.sleep(max(0.0, shown_at + delay - time.monotonic()))
        shown_at, last = time.monotonic(), frame
        yield frame, None
    if "error" in result:
        raise result["error"]
    yield last, result["text"]


# ----------------------------------------------------------------------------- page callbacks


def to_chatbot(history: History) -> list[dict]:
    """[[user, reply], ...] -> the Chatbot's messages. A pending reply is not shown; an empty one is a note."""
    messages = []
    for user, reply in history:
        messages.append({"role": "user", "content": user})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply or EMPTY_ANSWER})
    return messages


def warn(message: str) -> dict:
    """Show message as a toast and return the update that shows it in the page's status line."""
    import gradio as gr

    gr.Warning(message)
    return gr.update(value=f"⚠️ {message}", visible=True)


ANSWERING: set = set()  # session hashes of the pages whose answer is being generated now


def session_of(request) -> Optional[str]:
    return getattr(request, "session_hash", None)


def with_request(fn: Callable, gr) -> Callable:
    """fn, its ``request`` parameter annotated gr.Request so that Gradio passes the page's request. (Gradio is
    imported only when a page is built, so the annotation cannot be written in the signature.)"""
    fn.__annotations__["request"] = gr.Request
    return fn


def user_message_submitted(message, history, gen_length, steps, block_length, constraints, temperature, cfg_scale,
                           remasking, delay, request=None):  # fmt: skip
    """Accept the user's message: check it and the settings, add it to the history as a pending turn.

    Returns (history, chatbot messages, message box, visualisation, status). A blank message changes
    nothing; a rejected one leaves the history as it was, keeps the text in the box and shows why. A
    pending turn whose answer is not being generated (its event never ran) is dropped first.
    """
    import gradio as gr

    history = [list(pair) for pair in (history or [])]
    hidden = gr.update(value="", visible=False)
    if not isinstance(message, str) or not message.strip():
        return history, to_chatbot(history), message, gr.skip(), hidden
    try:
        if history and history[-1][1] is None:
            if session_of(request) in ANSWERING:
                raise ValueError("The previous answer is still being written; wait for it, or Clear Conversation.")
            history = history[:-1]
        gen_length = check_settings(gen_length, steps, block_length, temperature, cfg_scale, remasking)[0]
        check_delay(delay)
        parse_constraints(constraints, gen_length)
    except ValueError as error:
        return history, to_chatbot(history), message, gr.skip(), warn(str(error))
    history.append([message, None])
    return history, to_chatbot(history), "", gr.skip(), hidden


def make_bot_response(model, tokenizer, device):
    """The streaming callback of the Send event, bound to a loaded model."""
    import gradio as gr

    def bot_response(history, gen_length, steps, block_length, constraints, temperature, cfg_scale, remasking, delay,
                     multi_turn=True, request=None):  # fmt: skip
        """Yield (history, chatbot, visualisation, current response, message box, status) per frame while
        the answer is denoised. On any error the pending message leaves the history and goes back into the
        message box, and the error is shown."""
        history = [list(pair) for pair in (history or [])]
        if not history or history[-1][1] is not None:  # nothing pending (e.g. the message was rejected)
            yield history, to_chatbot(history), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        message, session = history[-1][0], session_of(request)
        ANSWERING.add(session)
        try:
            messages = format_chat_history(history, multi_turn)  # ends with the pending user turn
            gen_length = check_settings(gen_length, steps, block_length, temperature, cfg_scale, remasking)[0]
            delay = check_delay(delay)
            fixed = parse_constraints(constraints, gen_length)

            def work(on_frame):
                return generate_response_with_visualization(
                    model, tokenizer, device, messages, gen_length=gen_length, steps=steps, constraints=fixed,
                    temperature=temperature, cfg_scale=cfg_scale, block_length=block_length, remasking=remasking,
                    on_frame=on_frame,
                )[1]  # fmt: skip

            for frame, text in stream_frames(delay, work):
                if text is not None:
                    history[-1][1] = text
                yield history, to_chatbot(history), frame, text or "", gr.skip(), gr.skip()
        except Exception as error:  # any failure: the conversation goes back to how it was before the message
            history = history[:-1]
            kind = "" if isinstance(error, ValueError) else f"{type(error).__name__}: "
            yield history, to_chatbot(history), gr.skip(), "", message, warn(f"The answer failed: {kind}{error}")
        finally:
            ANSWERING.discard(session)

    return bot_response


def clear_conversation(gen_length=GEN_LENGTH[2]):
    """Empty the history, chat, current response, message box and status; the visualisation shows an
    all-mask answer of gen_length slots (so the legend stays)."""
    import gradio as gr

    return [], [], "", mask_frame(gen_length), "", gr.update(value="", visible=False)


def mask_frame(gen_length) -> Frame:
    """An answer of gen_length masks (none when gen_length is not a number from 1 to 1024)."""
    ok = isinstance(gen_length, (int, float)) and 1 <= gen_length <= 1024
    return [(MASK_TOKEN, MASKED)] * int(gen_length) if ok else []


# ----------------------------------------------------------------------------- page


def is_tiny_world(tokenizer) -> bool:
    """Whether the model is a tiny-world model (the embedded ones): they answer the four task families,
    one question at a time."""
    return len(tokenizer) <= TINY_VOCAB


def model_line(model, name: Optional[str], device) -> str:
    """One markdown line naming the loaded model, its size, device and dtype."""
    name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    parts = [f"**Model:** `{os.path.basename(os.path.normpath(name)) or name}`"]
    try:
        params = sum(p.numel() for p in model.parameters())
        parts.append(f"{params / 1e9:.1f}B parameters" if params >= 1e9 else f"{params / 1e6:.1f}M parameters")
        parts.append(str(next(model.parameters()).dtype).removeprefix("torch."))
    except (AttributeError, StopIteration):
        pass
    parts.append(f"on {device}")
    return " · ".join(parts)


def build_demo(model, tokenizer, device=None, name: Optional[str] = None, examples=None, multi_turn=None):
    """The Gradio Blocks for a loaded model. Launch with demo.queue().launch(css=CSS).

    name: shown in the model line (default: the checkpoint's name). examples: (message, constraints)
    pairs (default: prompts the tiny-world models answer for them, general ones otherwise). multi_turn:
    whether earlier turns are sent to the model by default (default: not for tiny-world models, which
    are single-turn).
    """
    import gradio as gr

    from genjo.loading import sampler_defaults

    device = device if device is not None else getattr(model, "device", "cpu")
    tiny = is_tiny_world(tokenizer)
    examples = examples if examples is not None else (TINY_EXAMPLES if tiny else GENERAL_EXAMPLES)
    multi_turn = (not tiny) if multi_turn is None else multi_turn
    defaults = sampler_defaults(model)
    constraint_example = TINY_CONSTRAINT_EXAMPLE if tiny else GENERAL_CONSTRAINT_EXAMPLE

    def slider(label: str, spec: tuple, key: str, elem_id: str):
        low, high, default, step = spec
        value = defaults.get(key, default)
        return gr.Slider(minimum=min(low, value), maximum=max(high, value), value=value, step=step, label=label,
                         elem_id=elem_id)  # fmt: skip

    with gr.Blocks(title="Genjo demo") as demo:
        gr.Markdown(TITLE)
        gr.Markdown(model_line(model, name, device), elem_id="model-line")
        chat_history = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chatbot", placeholder=PLACEHOLDER)
                with gr.Row(equal_height=True):
                    user_input = gr.Textbox(label="Your Message", placeholder="Type your message here...",
                                            show_label=False, elem_id="message", scale=7, lines=1)  # fmt: skip
                    send_btn = gr.Button("Send", elem_id="send", variant="primary", scale=1)
                status = gr.Markdown("", visible=False, elem_id="status")
                constraints_input = gr.Textbox(label="Word Constraints", value="", elem_id="constraints",
                                               info=CONSTRAINTS_INFO.format(example=constraint_example),
                                               placeholder="position:word, e.g. 2:delta")  # fmt: skip
            with gr.Column(scale=2):
                output_vis = gr.HighlightedText(label="Denoising Process Visualization", combine_adjacent=False,
                                                show_legend=True, show_inline_category=False, color_map=COLOUR_MAP,
                                                value=mask_frame(defaults.get("gen_length", GEN_LENGTH[2])),
                                                elem_id="vis")  # fmt: skip
                gr.Examples(examples=[list(e) for e in examples], inputs=[user_input, constraints_input],
                            label="Try these (click one, then Send)", elem_id="examples")  # fmt: skip
        with gr.Accordion("Generation Settings", open=False, elem_id="settings"):
            with gr.Row():
                gen_length = slider("Generation Length", GEN_LENGTH, "gen_length", "gen_length")
                steps = slider("Denoising Steps", STEPS, "steps", "steps")
            with gr.Row():
                temperature = slider("Temperature", TEMPERATURE, "temperature", "temperature")
                cfg_scale = slider("CFG Scale", CFG_SCALE, "cfg_scale", "cfg_scale")
            with gr.Row():
                block_length = slider("Block Length", BLOCK_LENGTH, "block_length", "block_length")
                remasking = gr.Radio(list(REMASKING), value=defaults.get("remasking", "low_confidence"),
                                     label="Remasking Strategy")  # fmt: skip
            with gr.Row():
                delay = slider("Visualization Delay (seconds)", DELAY, "delay", "delay")
                use_history = gr.Checkbox(
                    value=multi_turn, label="Send earlier turns to the model",
                    info="Off for single-turn models such as the embedded tiny one: each question stands alone.",
                )  # fmt: skip
        current_response = gr.Textbox(label="Current Response", lines=3, visible=False)
        clear_btn = gr.Button("Clear Conversation", elem_id="clear", size="sm")

        settings = [gen_length, steps, block_length, constraints_input, temperature, cfg_scale, remasking, delay]
        gr.on(
            [user_input.submit, send_btn.click],
            with_request(user_message_submitted, gr),
            inputs=[user_input, chat_history, *settings],
            outputs=[chat_history, chatbot, user_input, output_vis, status],
            api_name="user_message_submitted",
        ).then(
            with_request(make_bot_response(model, tokenizer, device), gr),
            inputs=[chat_history, *settings, use_history],
            outputs=[chat_history, chatbot, output_vis, current_response, user_input, status],
            api_name="bot_response",
        )
        clear_btn.click(clear_conversation, inputs=[gen_length],
                        outputs=[chat_history, chatbot, current_response, output_vis, user_input, status],
                        api_name="clear_conversation")  # fmt: skip
    return demo


def main(argv=None) -> None:
    from genjo.loading import add_model_arguments, load_from_args

    parser = add_model_arguments(argparse.ArgumentParser(description="Genjo Gradio demo."))
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (default: off)")
    args = parser.parse_args(argv)

    model, tokenizer = load_from_args(args)
    print(f"Using device: {model.device}", flush=True)
    demo = build_demo(model, tokenizer, name=args.model)
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, ssr_mode=False)


if __name__ == "__main__":
    main()
