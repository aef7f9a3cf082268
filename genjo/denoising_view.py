"""The demo's live view of denoising: answer a conversation with ``generate()`` and draw one frame per step.

A frame is the answer as the page's HighlightedText shows it: one ``(text, category)`` per answer slot, none
ever dropped, so every slot keeps its place from frame to frame. Masked slots show ``[MASK]``; tokens revealed
by the step are coloured by their confidence, tokens revealed by an earlier step are blue, word constraints
(``genjo.constraints``) purple, end-of-text slots faint ``EOS`` / ``EoT`` chips. The frames come from the
sampler's ``step_callback``: this module never copies the sampler.

Settings are the demo's, lenient like the reference demo's (``check_settings``): the block is clamped to the
answer and the steps rounded down to a whole number per block; anything else is the sampler's own rule
(``genjo.sampling.check_sampler_settings``), reported under the settings' labels on the page.
"""

import math
import re
from collections.abc import Callable
from typing import Optional

import torch

from .chat_format import encode_chat
from .checks import check_int
from .constraints import ConstrainedModel, constraint_token_ids
from .sampling import StepInfo, check_sampler_settings, generate

MASK_TOKEN = "[MASK]"
# Frame categories (the legend's names) and their colours.
MASKED = "mask"
NEW_LOW, NEW_MID, NEW_HIGH = "new, confidence < 0.3", "new, 0.3 to 0.7", "new, confidence >= 0.7"
EARLIER = "revealed earlier"
CONSTRAINT = "word constraint"
END = "end of text"
COLOUR_MAP = {  # the page shows each at half opacity; END must stay (241, 241, 241) for the page's CSS
    MASKED: "#9E9E9E",
    NEW_LOW: "#FF6666",
    NEW_MID: "#FFAA33",
    NEW_HIGH: "#66CC66",
    EARLIER: "#6699CC",
    CONSTRAINT: "#B084F5",
    END: "#F1F1F1",
}
END_NAMES = {"<|endoftext|>": "EOS", "<|eot_id|>": "EoT"}
# The demo's name of each sampler setting: its control's label, also used in the errors it shows.
SETTING_LABELS = {
    "gen_length": "Generation Length",
    "steps": "Denoising Steps",
    "block_length": "Block Length",
    "temperature": "Temperature",
    "cfg_scale": "CFG Scale",
    "remasking": "Remasking Strategy",
}
SETTING_NAME = re.compile(r"\b(" + "|".join(SETTING_LABELS) + r")\b")

Frame = list[tuple[str, str]]  # gen_length (text, category) pairs for the HighlightedText


# ----------------------------------------------------------------------------- settings and prompt


def check_settings(gen_length, steps, block_length, temperature, cfg_scale, remasking) -> tuple[int, int, int]:
    """Validate the demo's settings and return (gen_length, steps, block_length) as generate() needs them.

    Lenient like the reference demo: the three lengths may come as floats (from sliders), the block is
    clamped to the answer and each block gets max(1, steps // num_blocks) steps. Every other rule is the
    sampler's (e.g. an answer that is not a whole number of blocks: generate() has equal blocks only); its
    ValueError is raised with the settings named by their labels (``SETTING_LABELS``).
    """
    lengths = {"gen_length": gen_length, "steps": steps, "block_length": block_length}
    for name, value in lengths.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{SETTING_LABELS[name]} must be a finite number; got {value!r}.")
        check_int(SETTING_LABELS[name], int(value), minimum=1)  # the leniency below divides by them
    gen_length, steps, block_length = int(gen_length), int(steps), int(block_length)
    block_length = min(block_length, gen_length)
    num_blocks = gen_length // block_length
    steps = max(1, steps // num_blocks) * num_blocks
    try:
        check_sampler_settings(gen_length=gen_length, steps=steps, block_length=block_length,
                               temperature=temperature, cfg_scale=cfg_scale, remasking=remasking)  # fmt: skip
    except ValueError as error:
        raise ValueError(SETTING_NAME.sub(lambda name: SETTING_LABELS[name.group()], str(error))) from None
    return gen_length, steps, block_length


def chat_prompt_ids(tokenizer, messages: list[dict], gen_length: int, max_length: Optional[int]) -> list[int]:
    """Template ids of the conversation plus the generation prompt, dropping the oldest exchanges to fit.

    Message contents are plain text: a typed ``<|eot_id|>`` or ``<|mdm_mask|>`` stays characters."""
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
    """One frame of the answer: one (text, category) per slot, none dropped.

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


def mask_frame(gen_length) -> Frame:
    """An answer of gen_length masks (none when gen_length is not a number from 1 to 1024)."""
    ok = isinstance(gen_length, (int, float)) and 1 <= gen_length <= 1024
    return [(MASK_TOKEN, MASKED)] * int(gen_length) if ok else []


# ----------------------------------------------------------------------------- generation


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

    messages: [{"role": ..., "content": str}, ...] ending with the user turn to answer; constraints:
    answer position -> word (``genjo.constraints.parse_constraints``). The settings pass ``check_settings``.
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
