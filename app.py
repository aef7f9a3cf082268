"""Gradio demo: chat with a Genjo instruct model and watch the answer being denoised live.

    python app.py                         # http://127.0.0.1:7860, the embedded tiny instruct model
    python app.py --model PATH --port 7861 --host 0.0.0.0
    python app.py --share                 # also a public gradio.live link

The visualisation panel streams one frame per sampling step while the model works (from
``generate()``'s ``step_callback``, run in a worker thread): masked slots show ``[MASK]``, tokens revealed
by the step are coloured by their confidence and earlier tokens are blue (SPEC §6). Word constraints
(``position:word``) fix answer tokens at given positions, counted in tokens from the start of the answer.

The model is loaded in ``main()``, so ``import app`` is cheap; ``build_demo(model, tokenizer)`` makes the
page for any loaded model.
"""

import argparse
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Optional

import torch

from generate import REMASKING, StepInfo, generate

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MASK_TOKEN = "[MASK]"
MASK_COLOUR = "#444444"
LOW_COLOUR, MID_COLOUR, HIGH_COLOUR = "#FF6666", "#FFAA33", "#66CC66"  # new tokens: c < 0.3, < 0.7, >= 0.7
EARLIER_COLOUR = "#6699CC"  # tokens revealed by an earlier step, and constraints
ERROR_COLOUR = "red"
COLOUR_MAP = {c: c for c in (MASK_COLOUR, LOW_COLOUR, MID_COLOUR, HIGH_COLOUR, EARLIER_COLOUR, ERROR_COLOUR)}
CSS = ".category-legend{display:none !important} button{height:60px}"
TITLE = "# Genjo - Large Language Diffusion Model Demo"
CONSTRAINTS_INFO = (
    "This model allows for placing specific words at specific positions using 'position:word' format. "
    "Example: 1st word once, 6th word 'upon' and 11th word 'time', would be: '0:Once, 5:upon, 10:time'"
)
# (min, max, default, step) of the settings sliders, SPEC §6.
GEN_LENGTH = (16, 128, 64, 8)
STEPS = (8, 64, 32, 4)
TEMPERATURE = (0.0, 1.0, 0.0, 0.1)
CFG_SCALE = (0.0, 2.0, 0.0, 0.1)
BLOCK_LENGTH = (8, 128, 32, 8)
DELAY = (0.0, 1.0, 0.1, 0.1)

Frame = list[tuple[str, str]]  # gen_length (text, colour) pairs for the HighlightedText


# ----------------------------------------------------------------------------- inputs


def parse_constraints(text: Optional[str]) -> dict[int, str]:
    """'0:Once, 5:upon' -> {0: 'Once', 5: 'upon'}.

    Parts are split on ',' and each at its first ':'; a part is kept when its position is an int >= 0
    and its word is not blank. Bad parts are skipped silently; a later duplicate position wins.
    """
    constraints = {}
    for part in (text or "").split(","):
        if ":" not in part:
            continue
        pos, word = part.split(":", 1)
        try:
            pos = int(pos.strip())
        except ValueError:
            continue
        if pos >= 0 and word.strip():
            constraints[pos] = word.strip()
    return constraints


def constraint_token_ids(tokenizer, constraints: dict[int, str], gen_length: int) -> dict[int, int]:
    """Answer position -> token id. Each word is encoded as ' ' + word and its tokens fill pos, pos+1, ...

    Tokens falling past the end of the answer are dropped; later positions overwrite earlier ones.
    """
    fixed = {}
    for pos, word in sorted(constraints.items()):
        for offset, token in enumerate(tokenizer(" " + word, add_special_tokens=False)["input_ids"]):
            if pos + offset < gen_length:
                fixed[pos + offset] = token
    return fixed


def format_chat_history(history: list) -> list[dict]:
    """[[user, bot], ...] pairs -> chat-template messages; a pair whose reply is empty adds the user turn only."""
    messages = []
    for user, bot in history:
        messages.append({"role": "user", "content": user})
        if bot:
            messages.append({"role": "assistant", "content": bot})
    return messages


def check_settings(gen_length, steps, block_length, temperature, cfg_scale, remasking) -> tuple[int, int, int]:
    """Validate the settings and return (gen_length, steps, block_length) as generate() needs them.

    Lenient like the reference demo: the block is clamped to the answer and each block gets
    max(1, steps // num_blocks) steps. An answer that is not a whole number of blocks is an error here,
    because generate() has equal blocks only.
    """
    gen_length, steps, block_length = int(gen_length), int(steps), int(block_length)
    if gen_length < 1 or steps < 1 or block_length < 1:
        raise ValueError("Generation Length, Denoising Steps and Block Length must be at least 1.")
    if temperature is None or temperature < 0 or cfg_scale is None or cfg_scale < 0:
        raise ValueError("Temperature and CFG Scale must be >= 0.")
    if remasking not in REMASKING:
        raise ValueError(f"Remasking Strategy must be one of {', '.join(REMASKING)}; got {remasking!r}.")
    block_length = min(block_length, gen_length)
    if gen_length % block_length:
        raise ValueError(f"Generation Length ({gen_length}) must be a multiple of Block Length ({block_length}).")
    num_blocks = gen_length // block_length
    return gen_length, max(1, steps // num_blocks) * num_blocks, block_length


# ----------------------------------------------------------------------------- frames


def confidence_colour(confidence: float) -> str:
    """Colour of a token revealed by the current step: red < 0.3 <= orange < 0.7 <= green."""
    if confidence < 0.3:
        return LOW_COLOUR
    return MID_COLOUR if confidence < 0.7 else HIGH_COLOUR


def make_frame(tokenizer, answer: list[int], mask_id: int, new: dict[int, float], fixed: set[int]) -> Frame:
    """One visualisation frame of the answer.

    answer: gen_length token ids (mask_id where still masked); new: position -> confidence of the tokens
    revealed by this step; fixed: constraint positions (always shown as earlier tokens).
    """
    frame = []
    for pos, token in enumerate(answer):
        if token == mask_id:
            frame.append((MASK_TOKEN, MASK_COLOUR))
            continue
        text = tokenizer.decode([token], skip_special_tokens=True)
        colour = confidence_colour(new[pos]) if pos in new and pos not in fixed else EARLIER_COLOUR
        frame.append((text, colour))
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

    Frame 0 is all [MASK]; frame 1 onwards shows the constraints; one more frame follows each step.
    on_frame, if given, receives each frame as soon as it exists (the app streams them from it).
    The oldest turns are left out of the prompt when it would not fit the model with the answer.
    """
    gen_length, steps, block_length = check_settings(gen_length, steps, block_length, temperature, cfg_scale,
                                                     remasking)  # fmt: skip
    mask_id = int(model.config.mask_token_id)
    prompt = chat_prompt_ids(tokenizer, messages, gen_length, getattr(model.config, "max_sequence_length", None))
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, L)
    L = input_ids.shape[1]
    fixed = constraint_token_ids(tokenizer, constraints or {}, gen_length)

    frames: list[Frame] = []

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if on_frame is not None:
            on_frame(frame)

    emit([(MASK_TOKEN, MASK_COLOUR)] * gen_length)
    sampler_model = model
    if fixed:
        columns = torch.tensor([L + p for p in fixed], device=device)
        tokens = torch.tensor(list(fixed.values()), device=device)
        sampler_model = ConstrainedModel(model, columns, tokens, mask_id)
        answer = [fixed.get(p, mask_id) for p in range(gen_length)]
        emit(make_frame(tokenizer, answer, mask_id, {}, set(fixed)))

    def step_callback(info: StepInfo) -> None:
        answer = info.canvas[0, L:].clone()  # (gen_length,)
        for pos, token in fixed.items():
            answer[pos] = token
        committed = info.committed[0, L:].nonzero().flatten().tolist()
        new = {p: float(info.confidence[0, L + p]) for p in committed}
        emit(make_frame(tokenizer, answer.tolist(), mask_id, new, set(fixed)))

    out = generate(sampler_model, input_ids, steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=temperature, cfg_scale=cfg_scale, remasking=remasking,
                   step_callback=step_callback)  # fmt: skip
    final = tokenizer.decode(out[0, L:].tolist(), skip_special_tokens=True)
    return frames, final


def chat_prompt_ids(tokenizer, messages: list[dict], gen_length: int, max_length: Optional[int]) -> list[int]:
    """Template ids of the conversation plus the generation prompt, dropping the oldest exchanges to fit."""
    while True:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length is None or len(ids) + gen_length <= max_length or len(messages) <= 1:
            return ids
        messages = messages[2:] if messages[0]["role"] == "user" and len(messages) > 2 else messages[1:]


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
        except Exception as error:  # re-raised in the consumer
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


# ----------------------------------------------------------------------------- page


def to_chatbot(history: list) -> list[dict]:
    """[[user, bot], ...] -> the Chatbot's messages (a pending reply is not shown)."""
    return format_chat_history(history)


def user_message_submitted(message, history, gen_length, steps, constraints, delay):
    """Add the user's message to the history; clear the message box and the visualisation.

    Returns (history, chatbot messages, message box, visualisation). A blank message changes nothing.
    """
    history = list(history or [])
    if not message or not message.strip():
        return history, to_chatbot(history), message, []
    history.append([message, None])
    return history, to_chatbot(history), "", []


def make_bot_response(model, tokenizer, device):
    """The streaming callback of the Send event, bound to a loaded model."""

    def bot_response(history, gen_length, steps, constraints, delay, temperature, cfg_scale, block_length, remasking):
        """Yield (history, chatbot, visualisation, current response) per frame while the answer is denoised."""
        history = [list(pair) for pair in (history or [])]
        if not history or history[-1][1] is not None:
            yield history, to_chatbot(history), [], ""
            return
        messages = format_chat_history(history)  # the pending reply is empty: ends with the user turn
        try:
            if delay is None or not 0 <= float(delay) <= 10:
                raise ValueError("Visualization Delay must be between 0 and 10 seconds.")

            def work(on_frame):
                return generate_response_with_visualization(
                    model, tokenizer, device, messages, gen_length=gen_length, steps=steps,
                    constraints=parse_constraints(constraints), temperature=temperature, cfg_scale=cfg_scale,
                    block_length=block_length, remasking=remasking, on_frame=on_frame,
                )[1]  # fmt: skip

            for frame, text in stream_frames(float(delay), work):
                if text is not None:
                    history[-1][1] = text
                yield history, to_chatbot(history), frame, text or ""
        except (ValueError, TypeError, RuntimeError) as error:
            history = history[:-1]  # the failed message is dropped: the history is as before it
            yield history, to_chatbot(history), [(f"Error: {error}", ERROR_COLOUR)], ""

    return bot_response


def clear_conversation():
    """Empty the history, chat, current response, visualisation and message box."""
    return [], [], "", [], ""


def build_demo(model, tokenizer, device=None):
    """The Gradio Blocks of SPEC §6 for a loaded model. Launch with demo.queue().launch(css=CSS)."""
    import gradio as gr

    device = device if device is not None else getattr(model, "device", "cpu")
    with gr.Blocks(title="Genjo demo") as demo:
        gr.Markdown(TITLE)
        chat_history = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=500, elem_id="chatbot")
                with gr.Group():
                    with gr.Row():
                        user_input = gr.Textbox(label="Your Message", placeholder="Type your message here...",
                                                show_label=False, elem_id="message", scale=7)  # fmt: skip
                        send_btn = gr.Button("Send", elem_id="send", scale=1)
                constraints_input = gr.Textbox(label="Word Constraints", info=CONSTRAINTS_INFO, value="",
                                               placeholder="0:Once, 5:upon, 10:time",
                                               elem_id="constraints")  # fmt: skip
            with gr.Column(scale=2):
                output_vis = gr.HighlightedText(label="Denoising Process Visualization", combine_adjacent=False,
                                                show_legend=False, show_inline_category=False,
                                                color_map=COLOUR_MAP, elem_id="vis")  # fmt: skip
        with gr.Accordion("Generation Settings", open=False):
            with gr.Row():
                gen_length = slider("Generation Length", GEN_LENGTH, gr)
                steps = slider("Denoising Steps", STEPS, gr)
            with gr.Row():
                temperature = slider("Temperature", TEMPERATURE, gr)
                cfg_scale = slider("CFG Scale", CFG_SCALE, gr)
            with gr.Row():
                block_length = slider("Block Length", BLOCK_LENGTH, gr)
                remasking = gr.Radio(list(REMASKING), value="low_confidence", label="Remasking Strategy")
            with gr.Row():
                delay = slider("Visualization Delay (seconds)", DELAY, gr)
        current_response = gr.Textbox(label="Current Response", lines=3, visible=False)
        clear_btn = gr.Button("Clear Conversation", elem_id="clear")

        gr.on(
            [user_input.submit, send_btn.click],
            user_message_submitted,
            inputs=[user_input, chat_history, gen_length, steps, constraints_input, delay],
            outputs=[chat_history, chatbot, user_input, output_vis],
            api_name="user_message_submitted",
        ).then(
            make_bot_response(model, tokenizer, device),
            inputs=[
                chat_history,
                gen_length,
                steps,
                constraints_input,
                delay,
                temperature,
                cfg_scale,
                block_length,
                remasking,
            ],  # fmt: skip
            outputs=[chat_history, chatbot, output_vis, current_response],
            api_name="bot_response",
        )
        clear_btn.click(clear_conversation, outputs=[chat_history, chatbot, current_response, output_vis, user_input],
                        api_name="clear_conversation")  # fmt: skip
    return demo


def slider(label: str, spec: tuple, gr):
    low, high, default, step = spec
    return gr.Slider(minimum=low, maximum=high, value=default, step=step, label=label)


def main(argv=None) -> None:
    from genjo.loading import add_model_arguments, load_from_args

    parser = add_model_arguments(argparse.ArgumentParser(description="Genjo Gradio demo."))
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)

    model, tokenizer = load_from_args(args)
    print(f"Using device: {model.device}", flush=True)
    demo = build_demo(model, tokenizer)
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, ssr_mode=False)


if __name__ == "__main__":
    main()
