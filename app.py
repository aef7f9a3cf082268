"""Gradio demo: chat with a Genjo instruct model and watch the answer being denoised live.

    python app.py                         # http://127.0.0.1:7860, the embedded tiny instruct model
    python app.py --model PATH --port 7861 --host 0.0.0.0
    python app.py --share                 # also a public gradio.live link

The visualisation panel streams one frame per sampling step while the model works (from
``generate()``'s ``step_callback``, run in a worker thread). Every answer slot keeps its place: masked
slots show ``[MASK]``, tokens revealed by the step are coloured by their confidence, tokens revealed by
an earlier step are blue, end-of-text slots are faint ``EOS`` / ``EoT`` chips; a legend names the colours.
Word constraints (``position:word``) fix answer tokens at given positions, counted in tokens from the
start of the answer. The frames and the generation behind them are ``genjo.denoising_view``, the word
constraints ``genjo.constraints``; this script is the page and its event glue.

The conversation stays well formed whatever happens: a message is accepted only once its settings are
valid; if generation fails, the message leaves the conversation, goes back into the message box and the
error is shown as a warning; an empty answer is kept as an (empty) assistant turn, so user and assistant
turns always alternate. Text a user types that spells a special token (``<|eot_id|>``) stays plain text in
the prompt. Single-turn models (the embedded tiny ones) are sent the last question only, by default
(``genjo.chat_format.conversation_messages``).

The page takes no files, so the server refuses every upload (``NoUploads``; Gradio keeps its upload
routes open otherwise, and stores what is posted there): launch with ``launch(demo, ...)``.

The model is loaded in ``main()``, so ``import app`` is cheap; ``build_demo(model, tokenizer)`` makes the
page for any loaded model. Sliders start at the checkpoint's own sampler settings, else at the fallbacks of
``genjo.settings`` (clamped into the slider's range).
"""

import argparse
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Optional

from genjo.chat_format import conversation_messages, is_single_turn
from genjo.cli import run_command
from genjo.constraints import (  # noqa: F401 - re-exported for `from app import ...`
    ConstrainedModel,
    constraint_token_ids,
    parse_constraints,
)
from genjo.denoising_view import (  # noqa: F401 - re-exported for `from app import ...`
    COLOUR_MAP,
    CONSTRAINT,
    EARLIER,
    END,
    MASK_TOKEN,
    MASKED,
    NEW_HIGH,
    NEW_LOW,
    NEW_MID,
    SETTING_LABELS,
    Frame,
    chat_prompt_ids,
    check_settings,
    confidence_category,
    generate_response_with_visualization,
    make_frame,
    mask_frame,
    token_label,
)
from genjo.sampling import REMASKING
from genjo.settings import FALLBACKS, checkpoint_sampler_defaults, resolve_sampler_settings

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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
PLACEHOLDER = (  # the panel sits beside the chat on a wide screen and below it on a narrow one
    "Type a question or pick an example, then **Send**: the answer is denoised live in the "
    "**Denoising Process Visualization** panel, beside the chat or below it on a narrow screen."
)
CONSTRAINTS_INFO = (
    "Comma-separated position:word pairs that fix words in the answer. A position counts tokens from the "
    "start of the answer (0 = its first token); a word may take several tokens and then also fills the "
    "positions after it; words after position 0 get a leading space. Example: {example}."
)
# (min, max, step) of the settings sliders. They start at the checkpoint's sampler_defaults, else at the
# table's fallback (genjo.settings) clamped into this range.
SLIDER_RANGES = {
    "gen_length": (16, 128, 8),
    "steps": (8, 128, 4),
    "temperature": (0.0, 1.0, 0.1),
    "cfg_scale": (0.0, 2.0, 0.1),
    "block_length": (8, 128, 8),
}
DELAY = (0.0, 1.0, 0.1)  # (min, max, step) of the Visualization Delay slider, in seconds
DEFAULT_DELAY = 0.1

# Prompts the embedded tiny-world models answer (3-8 digits to sort, 3-6 NATO words to reverse, sums of
# 0-99, the chat-taught capitals): (message, word constraints).
TINY_EXAMPLES = [
    ("Sort: 9 3 7 1 5", ""),
    ("Reverse: alpha bravo charlie", ""),
    ("What is 12 + 30?", ""),
    ("What is the capital of France?", ""),
    ("Reverse: alpha bravo charlie delta echo foxtrot golf", "5:delta, 6:charlie"),
]
TINY_CONSTRAINT_EXAMPLE = (
    '"Reverse: alpha bravo charlie delta echo foxtrot golf" (7 words, one more than the model learned) is answered '
    '"golf foxtrot echo bravo alpha", without delta and charlie; 5:delta, 6:charlie puts them back in place: '
    '"golf foxtrot echo delta charlie" (positions count tokens, not words: golf is 3 tokens, go + l + f)'
)
GENERAL_EXAMPLES = [
    ("What is the capital of France?", ""),
    ("Lily can run 12 kilometers per hour for 4 hours. How far does she run?", ""),
    ("Write a short poem about the sea.", ""),
    ("Tell me a story.", "0:Once, 1:upon, 2:a, 3:time"),
]
GENERAL_CONSTRAINT_EXAMPLE = '"Tell me a story." with 0:Once, 1:upon, 2:a, 3:time'

History = list[list]  # [[user, reply], ...]; reply None while it is being generated, "" when empty


# ----------------------------------------------------------------------------- inputs


def check_delay(delay) -> float:
    """The Visualization Delay as float seconds; ValueError unless it is a number from 0 to 10."""
    if not isinstance(delay, (int, float)) or not 0 <= delay <= 10:
        raise ValueError(f"Visualization Delay must be between 0 and 10 seconds; got {delay!r}.")
    return float(delay)


# ----------------------------------------------------------------------------- streaming


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
            messages = conversation_messages(history, multi_turn)  # ends with the pending user turn
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


def clear_conversation(gen_length=FALLBACKS["gen_length"]):
    """Empty the history, chat, current response, message box and status; the visualisation shows an
    all-mask answer of gen_length slots (so the legend stays)."""
    import gradio as gr

    return [], [], "", mask_frame(gen_length), "", gr.update(value="", visible=False)


# ----------------------------------------------------------------------------- page


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


def slider_values(model) -> dict:
    """Where the settings controls start: the checkpoint's sampler_defaults, else the table's fallback
    (genjo.settings) clamped into its slider's range. A checkpoint value outside the range widens the slider."""
    own = checkpoint_sampler_defaults(model)
    values = resolve_sampler_settings({}, model, names=[*SLIDER_RANGES, "remasking"])
    for name, (low, high, _) in SLIDER_RANGES.items():
        if name not in own:
            values[name] = min(max(values[name], low), high)
    return values


def build_demo(model, tokenizer, device=None, name: Optional[str] = None, examples=None, multi_turn=None):
    """The Gradio Blocks for a loaded model. Launch with ``launch(demo.queue(), css=CSS)`` (uploads refused).

    name: shown in the model line (default: the checkpoint's name). examples: (message, constraints)
    pairs (default: prompts the tiny-world models answer for them, general ones otherwise). multi_turn:
    whether earlier turns are sent to the model by default (default: not for tiny-world models, which
    are single-turn).
    """
    import gradio as gr

    device = device if device is not None else getattr(model, "device", "cpu")
    single_turn = is_single_turn(tokenizer)
    examples = examples if examples is not None else (TINY_EXAMPLES if single_turn else GENERAL_EXAMPLES)
    multi_turn = (not single_turn) if multi_turn is None else multi_turn
    start = slider_values(model)
    constraint_example = TINY_CONSTRAINT_EXAMPLE if single_turn else GENERAL_CONSTRAINT_EXAMPLE

    def slider(name: str):
        low, high, step = SLIDER_RANGES[name]
        value = start[name]
        return gr.Slider(minimum=min(low, value), maximum=max(high, value), value=value, step=step,
                         label=SETTING_LABELS[name], elem_id=name)  # fmt: skip

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
                                                value=mask_frame(start["gen_length"]),
                                                elem_id="vis")  # fmt: skip
                gr.Examples(examples=[list(e) for e in examples], inputs=[user_input, constraints_input],
                            label="Try these (click one, then Send)", elem_id="examples")  # fmt: skip
        with gr.Accordion("Generation Settings", open=False, elem_id="settings"):
            with gr.Row():
                gen_length = slider("gen_length")
                steps = slider("steps")
            with gr.Row():
                temperature = slider("temperature")
                cfg_scale = slider("cfg_scale")
            with gr.Row():
                block_length = slider("block_length")
                remasking = gr.Radio(list(REMASKING), value=start["remasking"], label=SETTING_LABELS["remasking"])
            with gr.Row():
                delay = gr.Slider(minimum=DELAY[0], maximum=DELAY[1], value=DEFAULT_DELAY, step=DELAY[2],
                                  label="Visualization Delay (seconds)", elem_id="delay")  # fmt: skip
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


class NoUploads:
    """ASGI middleware that refuses every file upload with 403 before Gradio reads a byte of it.

    The page takes text, sliders and buttons only, yet Gradio's server keeps its upload routes
    (``/gradio_api/upload``, ...) open, and stores whatever is posted there in its temporary folder. Every
    upload is a ``multipart/form-data`` request; none of the page's own requests is one (they send JSON).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
            if content_type.lower().startswith(b"multipart/"):
                from starlette.responses import PlainTextResponse

                await PlainTextResponse("This demo takes no file uploads.", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def launch(demo, **kwargs):
    """``demo.launch(**kwargs)`` with uploads refused (NoUploads); returns what launch returns."""
    from starlette.middleware import Middleware

    return demo.launch(app_kwargs={"middleware": [Middleware(NoUploads)]}, **kwargs)


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
    if not args.share:  # Gradio's own hint says "set share=True in launch()"; this command's option is --share
        print(f"Running on http://{args.host}:{args.port} (add --share for a public gradio.live link)", flush=True)
    launch(demo, server_name=args.host, server_port=args.port, share=args.share, css=CSS, ssr_mode=False,
           quiet=not args.share)  # fmt: skip


if __name__ == "__main__":
    run_command(main)
