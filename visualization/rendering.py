"""Draw a recorded trajectory in two styles, with Pillow (no browser needed).

- ``box``: the paper's style. Every answer position is a rounded box; masks read "Mask" on a grey
  background, revealed tokens get a background from an 8-stop blue gradient by the step that revealed
  them (index ``min(step * 6 // N, 6)``, blended half-way to the next stop on odd steps); a title
  "Generation Step k" and a legend: the mask, then the colours of steps 1, N/4, N/2, 3N/4 and N.
- ``text``: the article's style. The answer is flowing text whose colour darkens with the reveal step
  (index ``min(int(step^0.7 / N^0.7 * 6), 6)`` of 7 stops); each mask is a small grey block in the flow;
  end-of-text tokens take no room, so the trailing blocks vanish as they are revealed; no title or legend.

Outputs: one frame as an image (1200x800 box, 1200x500 text), a grid PNG of selected steps, an animated
GIF of every step, and a self-contained HTML page with a step slider.
"""

import html
from functools import lru_cache
from typing import Optional

from PIL import Image, ImageDraw, ImageFont

from .trajectory import Trajectory

STYLES = ("box", "text")
SIZES = {"box": (1200, 800), "text": (1200, 500)}
MASK_BACKGROUND = "#EFE5CF"  # warm sand: no shade of the blue step gradient comes near it
MASK_TEXT = "#7C6F57"
TEXT_MASK = "#D4D4D8"  # the text style's mask blocks (grey, apart from the blue text)
BORDER = "#cbd5e1"


def _hex(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))


def _to_hex(rgb) -> str:
    return "#" + "".join(f"{round(c):02X}" for c in rgb)


def _blend(a: str, b: str, t: float) -> str:
    return _to_hex(x + (y - x) * t for x, y in zip(_hex(a), _hex(b)))


def _gradient(start: str, end: str, n: int) -> list[str]:
    return [_blend(start, end, i / (n - 1)) for i in range(n)]


BOX_STOPS = _gradient("#F0F8FF", "#0C3770", 8)  # backgrounds, pale to dark blue
TEXT_STOPS = _gradient("#5B8FD0", "#0C3770", 7)  # text colours, all readable on white


def box_colour(step: int, num_steps: int) -> str:
    """Background of a token revealed at ``step``: stop min(step*6//N, 6), blended by (step mod 2)/2."""
    index = min(step * 6 // max(num_steps, 1), 6)
    return _blend(BOX_STOPS[index], BOX_STOPS[index + 1], (step % 2) / 2)


def text_colour(step: int, num_steps: int) -> str:
    """Colour of text revealed at ``step``: stop min(int(step^0.7 / N^0.7 * 6), 6)."""
    return TEXT_STOPS[min(int(step**0.7 / max(num_steps, 1) ** 0.7 * 6), 6)]


def _ink_on(background: str) -> str:
    r, g, b = _hex(background)
    return "#FFFFFF" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#0F172A"


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib), else Pillow's default font."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:
        return ImageFont.load_default(size)


def box_label(text: str) -> str:
    """What a box shows for a token: stripped text; EOS/EoT and blanks get short visible names."""
    names = {"<|endoftext|>": "EOS", "<|eot_id|>": "EoT", "<|startoftext|>": "BOS"}
    if text in names:
        return names[text]
    stripped = text.strip()
    if stripped:
        return stripped
    return "\\n" if "\n" in text else "␣"


def flow_text(text: str) -> str:
    """What the text style shows for a token: special tokens vanish, the rest is kept as it is."""
    return "" if text.startswith("<|") and text.endswith("|>") else text


# ----------------------------------------------------------------------------- frames


def render_frame(trajectory: Trajectory, step: int, style: str = "box", size: Optional[tuple[int, int]] = None):
    """Frame ``step`` (0..num_steps) as an RGB PIL image of ``size`` (default 1200x800 box, 1200x500 text)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is unknown; use one of {', '.join(STYLES)}.")
    if not 0 <= step <= trajectory.num_steps:
        raise ValueError(f"step {step} is outside 0..{trajectory.num_steps}.")
    size = size or SIZES[style]
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    (_draw_boxes if style == "box" else _draw_text)(draw, trajectory, step, size)
    return image


def _draw_boxes(draw: ImageDraw.ImageDraw, trajectory: Trajectory, step: int, size: tuple[int, int]) -> None:
    width, height = size
    margin, title_h, legend_h = 30, 70, 70
    n, num_steps = trajectory.gen_length, trajectory.num_steps
    draw.text((width / 2, margin + 10), f"Generation Step {step}", fill="#0F172A", font=font(32), anchor="mt")
    # Largest boxes (at most 120 px wide, 2.4:1) whose grid fits between the title and the legend.
    area_w, area_h = width - 2 * margin, height - 2 * margin - title_h - legend_h
    box_w = 120
    while box_w > 20:
        gap = box_w // 10
        per_row = max(1, (area_w + gap) // (box_w + gap))
        rows = -(-n // per_row)
        if rows * (box_w // 2.4 + gap) - gap <= area_h:
            break
        box_w -= 4
    box_h, gap = int(box_w / 2.4), box_w // 10
    left = margin + (area_w - (per_row * (box_w + gap) - gap)) / 2
    top = margin + title_h + max(0, (area_h - (rows * (box_h + gap) - gap)) / 3)
    label_font = font(max(9, box_h // 2 - 2))
    shown = trajectory.revealed(step)
    for pos in range(n):
        x = left + (pos % per_row) * (box_w + gap)
        y = top + (pos // per_row) * (box_h + gap)
        if shown[pos]:
            fill = box_colour(trajectory.reveal_step[pos], num_steps)
            label, ink = box_label(trajectory.texts[pos]), _ink_on(fill)
        else:
            fill, label, ink = MASK_BACKGROUND, "Mask", MASK_TEXT
        draw.rounded_rectangle((x, y, x + box_w, y + box_h), radius=box_h // 4, fill=fill, outline=BORDER)
        draw.text((x + box_w / 2, y + box_h / 2), _fit(draw, label, label_font, box_w - 8), fill=ink,
                  font=label_font, anchor="mm")  # fmt: skip
    # Legend: the mask, then the colours of steps 1, N/4, N/2, 3N/4 and N.
    entries = [("Mask", MASK_BACKGROUND)] + [(f"Step {m}", box_colour(m, num_steps)) for m in legend_steps(num_steps)]
    swatch, y = 28, height - margin - legend_h / 2
    entry_w = 160
    x = (width - entry_w * len(entries)) / 2
    for label, colour in entries:
        draw.rounded_rectangle((x, y - swatch / 2, x + swatch, y + swatch / 2), radius=5, fill=colour, outline=BORDER)
        draw.text((x + swatch + 8, y), label, fill="#334155", font=font(18), anchor="lm")
        x += entry_w


def legend_steps(num_steps: int) -> list[int]:
    """The steps the legend shows: 1 (the first that reveals anything), N/4, N/2, 3N/4 and N."""
    return sorted({max(1, round(num_steps * q / 4)) for q in range(5)})


def _fit(draw: ImageDraw.ImageDraw, text: str, text_font, max_width: float) -> str:
    """The text, cut with an ellipsis to fit max_width pixels."""
    if draw.textlength(text, font=text_font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=text_font) > max_width:
        text = text[:-1]
    return text + "…"


def _draw_text(draw: ImageDraw.ImageDraw, trajectory: Trajectory, step: int, size: tuple[int, int]) -> None:
    width, height = size
    margin = 40
    text_font = font(30)
    line_h = 44
    x, y = margin, margin
    shown = trajectory.revealed(step)
    block_w, block_h = 16, 26
    for pos in range(trajectory.gen_length):
        if not shown[pos]:  # a mask: a grey block in the flow
            if x + block_w > width - margin:
                x, y = margin, y + line_h
            if y + line_h > height - margin / 2:
                return
            top = y + (line_h - block_h) / 2 - 4
            draw.rounded_rectangle((x + 2, top, x + block_w, top + block_h), radius=3, fill=TEXT_MASK)
            x += block_w + 2
            continue
        colour = text_colour(trajectory.reveal_step[pos], trajectory.num_steps)
        for i, piece in enumerate(flow_text(trajectory.texts[pos]).split("\n")):
            if i:
                x, y = margin, y + line_h
            for word in _split_keep_spaces(piece):
                w = draw.textlength(word, font=text_font)
                if x + w > width - margin and x > margin:
                    x, y = margin, y + line_h
                    word = word.lstrip()
                    w = draw.textlength(word, font=text_font)
                if y + line_h > height - margin / 2:
                    return
                draw.text((x, y), word, fill=colour, font=text_font)
                x += w


def _split_keep_spaces(text: str) -> list[str]:
    """'a bc  d' -> ['a', ' bc', '  d']: wrap points before each run of spaces."""
    parts, current = [], ""
    for i, ch in enumerate(text):
        if ch == " " and i and text[i - 1] != " " and current:
            parts.append(current)
            current = ""
        current += ch
    return parts + [current] if current else parts


# ----------------------------------------------------------------------------- outputs


def default_grid_steps(num_steps: int, count: int = 6) -> list[int]:
    """``count`` evenly spaced steps from 0 to num_steps."""
    return sorted({round(num_steps * i / (count - 1)) for i in range(count)})


def render_grid(trajectory: Trajectory, steps: Optional[list[int]] = None, style: str = "box", columns: int = 3,
                scale: float = 0.5) -> Image.Image:  # fmt: skip
    """Frames of the given steps (default: 6 evenly spaced), tiled ``columns`` wide, each scaled by ``scale``."""
    steps = steps if steps is not None else default_grid_steps(trajectory.num_steps)
    w, h = SIZES[style]
    w, h = int(w * scale), int(h * scale)
    rows = -(-len(steps) // columns)
    gap = 10
    grid = Image.new("RGB", (columns * w + (columns + 1) * gap, rows * h + (rows + 1) * gap), "#E2E8F0")
    for i, step in enumerate(steps):
        frame = render_frame(trajectory, step, style).resize((w, h), Image.LANCZOS)
        grid.paste(frame, (gap + (i % columns) * (w + gap), gap + (i // columns) * (h + gap)))
    return grid


def save_gif(trajectory: Trajectory, path: str, style: str = "box", frame_ms: int = 150, hold_ms: int = 2000,
             scale: float = 0.6) -> None:  # fmt: skip
    """Animated GIF of frames 0..num_steps, ``frame_ms`` each, the final frame held ``hold_ms``; loops."""
    w, h = SIZES[style]
    size = (int(w * scale), int(h * scale))
    frames = [render_frame(trajectory, k, style).resize(size, Image.LANCZOS) for k in range(trajectory.num_steps + 1)]
    palette = _gif_palette(frames, trajectory.num_steps, style)
    frames = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    durations = [frame_ms] * (len(frames) - 1) + [max(hold_ms, frame_ms)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)


def _gif_palette(frames: list[Image.Image], num_steps: int, style: str) -> Image.Image:
    """One 256-colour palette for every frame, so a colour means the same step in each of them: the exact
    colours the pictures use (white, masks, every step's shade), so none is lost to a nearby shade where it
    covers a few pixels only (a legend swatch), then the most common others (anti-aliasing, text)."""
    if style == "box":
        steps = [box_colour(k, num_steps) for k in range(num_steps + 1)]
        colours = ["#FFFFFF", MASK_BACKGROUND, MASK_TEXT, BORDER] + steps
    else:
        colours = ["#FFFFFF", TEXT_MASK] + TEXT_STOPS
    exact = list(dict.fromkeys(_hex(c) for c in colours))
    w, h = frames[0].size
    picked = frames[:: max(1, len(frames) // 8)] + [frames[-1]]
    sheet = Image.new("RGB", (w * len(picked), h))
    for i, frame in enumerate(picked):
        sheet.paste(frame, (i * w, 0))
    found = sheet.quantize(colors=256 - len(exact), method=Image.Quantize.MEDIANCUT).getpalette()
    # Pillow maps each pixel to the palette colour nearest to its bin of 4 levels per channel, not to the
    # pixel itself: a near twin of an exact colour could take its pixels, so the twins are left out.
    others = [tuple(found[i : i + 3]) for i in range(0, len(found), 3)]
    others = [rgb for rgb in others if all(max(abs(a - b) for a, b in zip(rgb, e)) > 6 for e in exact)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([c for rgb in exact + others[: 256 - len(exact)] for c in rgb])
    return palette


def render_html(trajectory: Trajectory, style: str = "box") -> str:
    """A self-contained HTML page: one frame per step, shown one at a time, with a step slider and a Play
    button (inline CSS and JS, no network)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is unknown; use one of {', '.join(STYLES)}.")
    n_steps = trajectory.num_steps
    frames = []
    for step in range(n_steps + 1):
        shown = trajectory.revealed(step)
        spans = []
        for pos, text in enumerate(trajectory.texts):
            s = trajectory.reveal_step[pos]
            if style == "box":
                if shown[pos]:
                    bg = box_colour(s, n_steps)
                    spans.append(f'<span class="tok" style="background:{bg};color:{_ink_on(bg)}" '
                                 f'title="step {s}">{html.escape(box_label(text))}</span>')  # fmt: skip
                else:
                    spans.append('<span class="tok mask">Mask</span>')
            elif shown[pos]:
                body = html.escape(flow_text(text)).replace("\n", "<br>")
                spans.append(f'<span style="color:{text_colour(s, n_steps)}" title="step {s}">{body}</span>')
            else:
                spans.append('<span class="mask-block"></span>')
        title = f"<h2>Generation Step {step}</h2>" if style == "box" else ""
        frames.append(f'<div class="frame frame-{style}" data-step="{step}" hidden>{title}{"".join(spans)}</div>')
    legend = ""
    if style == "box":
        entries = [("Mask", MASK_BACKGROUND)] + [(f"Step {m}", box_colour(m, n_steps)) for m in legend_steps(n_steps)]
        legend = "".join(f'<span class="tok" style="background:{c};color:{_ink_on(c)}">{label}</span>'
                         for label, c in entries)  # fmt: skip
        legend = f'<div class="legend">{legend}</div>'
    return HTML_PAGE.format(
        prompt=html.escape(trajectory.prompt),
        answer=html.escape(trajectory.answer),
        frames="\n".join(frames),
        legend=legend,
        last=n_steps,
        mask=MASK_BACKGROUND,
        mask_text=MASK_TEXT,
    )


# Frames are ``div.frame`` and tokens ``span.tok``: the two never share a class, so hiding frames works.
HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Genjo denoising: {prompt}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #0f172a; }}
.frame[hidden] {{ display: none !important; }}
.frame-box {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.frame-box h2 {{ width: 100%; text-align: center; }}
.frame-text {{ font-size: 28px; line-height: 1.5; white-space: pre-wrap; }}
.tok {{ display: inline-flex; align-items: center; justify-content: center; width: 120px; height: 50px;
        border-radius: 12px; border: 1px solid #cbd5e1; overflow: hidden; }}
.mask {{ background: {mask}; color: {mask_text}; }}
.mask-block {{ display: inline-block; width: 14px; height: 0.9em; margin: 0 2px; border-radius: 3px;
               background: {mask}; vertical-align: -0.1em; }}
.legend {{ display: flex; gap: 10px; margin-top: 1.5em; }}
.controls {{ margin: 1em 0; display: flex; gap: 1em; align-items: center; }}
</style></head><body>
<p><b>Prompt:</b> {prompt}<br><b>Answer:</b> {answer}</p>
<div class="controls"><button id="play">Play</button>
<input id="step" type="range" min="0" max="{last}" value="{last}" style="flex:1"><span id="label"></span></div>
{frames}
{legend}
<script>
const frames = document.querySelectorAll('.frame'), slider = document.getElementById('step');
let timer = null;
function show(k) {{ frames.forEach(f => f.hidden = +f.dataset.step !== k);
  slider.value = k; document.getElementById('label').textContent = 'step ' + k + ' / {last}'; }}
slider.oninput = () => {{ clearInterval(timer); show(+slider.value); }};
document.getElementById('play').onclick = () => {{ clearInterval(timer); let k = 0; show(0);
  timer = setInterval(() => {{ if (++k > {last}) clearInterval(timer); else show(k); }}, 150); }};
show({last});
</script></body></html>
"""
