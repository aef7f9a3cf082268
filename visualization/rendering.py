"""Draw a recorded trajectory in two styles, with Pillow (no browser needed).

- ``box``: the paper's layout. Every answer position is a rounded box; masks read "Mask" on a sand
  background, revealed tokens get a background from a pale-aqua-to-dark-indigo ramp by the step that revealed
  them (equal colour difference from one step to the next); a title "Generation Step k" and a legend: the
  mask, the colours of steps 1, N/4, N/2, 3N/4 and N, and what the short names in the boxes stand for
  (``␣`` a space, ``EoT`` end of turn, ``EOS`` end of text, those the answer has).
- ``text``: the article's layout. The answer is flowing text whose colour darkens with the reveal step
  (the dark half of the same ramp); each mask is a small grey block in the flow; end-of-text tokens take
  no room, so the trailing blocks vanish as they are revealed; no title or legend.

Both put the question on a header line ("Q: ...") above the canvas (a grid has one header for all its
frames). Outputs: one frame as an image (1200x800 box, 1200x500 text), a grid PNG of selected steps, an
animated GIF of every step, and a self-contained HTML page with a step slider and Play/Pause.
"""

import html
from functools import lru_cache
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .trajectory import Trajectory

STYLES = ("box", "text")
SIZES = {"box": (1200, 800), "text": (1200, 500)}
MASK_BACKGROUND = "#EFE5CF"  # warm sand: no shade of the blue step ramp comes near it
MASK_TEXT = "#7C6F57"
TEXT_MASK = "#D4D4D8"  # the text style's mask blocks (grey, apart from the blue text)
BORDER = "#cbd5e1"
HEADER_BACKGROUND = "#F1F5F9"  # the question's header band
HEADER_INK = "#0F172A"
HEADER_HEIGHT = 56  # pixels at full size
DARK_INK, LIGHT_INK = "#020617", "#FFFFFF"  # on every step shade one of them has contrast >= 4.5
# Short names in the boxes (box_label) and what they stand for, in legend order.
SYMBOLS = {"␣": "space", "\\n": "newline", "EoT": "end of turn", "EOS": "end of text", "BOS": "start of text"}


# ----------------------------------------------------------------------------- colours


def _hex(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))


def _linear(channel: int) -> float:
    """An sRGB channel (0..255) as linear light (0..1)."""
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _encoded(linear: float) -> int:
    """Linear light (0..1) as an sRGB channel (0..255), clipped."""
    c = 12.92 * linear if linear <= 0.0031308 else 1.055 * max(linear, 0.0) ** (1 / 2.4) - 0.055
    return max(0, min(255, round(c * 255)))


_D65 = (0.95047, 1.0, 1.08883)  # reference white of sRGB
_LAB_EPSILON = 216 / 24389
_LAB_KAPPA = 24389 / 27


def _to_lab(colour: str) -> tuple[float, float, float]:
    """CIELAB (L* 0..100, a*, b*) of an sRGB hex colour, D65 white."""
    r, g, b = (_linear(c) for c in _hex(colour))
    xyz = (0.4124 * r + 0.3576 * g + 0.1805 * b, 0.2126 * r + 0.7152 * g + 0.0722 * b,
           0.0193 * r + 0.1192 * g + 0.9505 * b)  # fmt: skip
    fx, fy, fz = (t ** (1 / 3) if t > _LAB_EPSILON else (_LAB_KAPPA * t + 16) / 116
                  for t in (v / w for v, w in zip(xyz, _D65)))  # fmt: skip
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def _from_lab(lab: tuple[float, float, float]) -> str:
    """The sRGB hex colour of a CIELAB colour (channels clipped to the sRGB range)."""
    L, a, b = lab
    fy = (L + 16) / 116
    x, y, z = ((f**3 if f**3 > _LAB_EPSILON else (116 * f - 16) / _LAB_KAPPA) * w
               for f, w in zip((fy + a / 500, fy, fy - b / 200), _D65))  # fmt: skip
    rgb = (3.2406 * x - 1.5372 * y - 0.4986 * z, -0.9689 * x + 1.8758 * y + 0.0415 * z,
           0.0557 * x - 0.2040 * y + 1.0570 * z)  # fmt: skip
    return "#" + "".join(f"{_encoded(c):02X}" for c in rgb)


def colour_difference(a: str, b: str) -> float:
    """CIE76 colour difference (Euclidean distance in CIELAB) of two hex colours: about 2.3 is just
    noticeable side by side, 100 separates white from black."""
    return sum((p - q) ** 2 for p, q in zip(_to_lab(a), _to_lab(b))) ** 0.5


def contrast_ratio(a: str, b: str) -> float:
    """WCAG contrast ratio of two hex colours (1 to 21; 4.5 is the minimum for body text)."""

    def luminance(colour: str) -> float:
        r, g, b = (_linear(c) for c in _hex(colour))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def ramp_colour(anchors: tuple[str, ...], t: float) -> str:
    """The colour at fraction ``t`` (clipped to 0..1) of the path through ``anchors`` in CIELAB, measured
    by length: equal steps of t are equal colour differences, whatever the spacing of the anchors."""
    labs = [_to_lab(c) for c in anchors]
    lengths = [sum((p - q) ** 2 for p, q in zip(u, v)) ** 0.5 for u, v in zip(labs, labs[1:])]
    distance = min(max(t, 0.0), 1.0) * sum(lengths)
    for i, length in enumerate(lengths):
        if distance <= length or i == len(lengths) - 1:
            u = distance / length if length else 0.0
            return _from_lab(tuple(p + (q - p) * u for p, q in zip(labs[i], labs[i + 1])))
        distance -= length
    return anchors[-1]


# Pale aqua through sky and royal blue to dark indigo, one continuous ramp. The hue turns as the shade
# darkens, which makes the path longer than a pale-to-dark blue of one hue: at 32 steps neighbours differ by
# 3.2 (CIE76) instead of 2.2, the legend's neighbours by 25 or more. (The paper's 8 stops, indexed by
# step*6//N and blended half-way on odd steps, gave steps 2 and 4 the same shade, steps 1 and 8 5.6 apart.)
# Every shade is at least 20 from the sand mask and 13 from white.
BOX_RAMP = ("#D2ECF6", "#9BD0E6", "#4A9BD1", "#2F5DB0", "#2A2A7A", "#1E0F4A")
TEXT_RAMP = BOX_RAMP[2:]  # the darker half: text readable on white


def _step_fraction(step: int, num_steps: int) -> float:
    """Step 1 (the first that reveals anything) -> 0, step num_steps -> 1."""
    return (step - 1) / (num_steps - 1) if num_steps > 1 else 1.0


def box_colour(step: int, num_steps: int) -> str:
    """Background of a token revealed at ``step`` (1..num_steps): its point on BOX_RAMP."""
    return ramp_colour(BOX_RAMP, _step_fraction(step, num_steps))


def text_colour(step: int, num_steps: int) -> str:
    """Colour of text revealed at ``step`` (1..num_steps): its point on TEXT_RAMP."""
    return ramp_colour(TEXT_RAMP, _step_fraction(step, num_steps))


def ink_on(background: str) -> str:
    """The ink (near-black or white) with the higher contrast on ``background``."""
    return max((DARK_INK, LIGHT_INK), key=lambda ink: contrast_ratio(ink, background))


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


def render_frame(trajectory: Trajectory, step: int, style: str = "box", size: Optional[tuple[int, int]] = None,
                 header: bool = True) -> Image.Image:  # fmt: skip
    """Frame ``step`` (0..num_steps) as an RGB PIL image of ``size`` (default 1200x800 box, 1200x500 text).

    header: put the question on a header line at the top (when the trajectory has one); the canvas below
    it keeps the rest of the frame.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} is unknown; use one of {', '.join(STYLES)}.")
    if not 0 <= step <= trajectory.num_steps:
        raise ValueError(f"step {step} is outside 0..{trajectory.num_steps}.")
    size = size or SIZES[style]
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    text = header_text(trajectory.prompt) if header else ""
    top = draw_header(draw, text, size[0]) if text else 0
    (_draw_boxes if style == "box" else _draw_text)(draw, trajectory, step, size, top)
    return image


def header_text(prompt: str) -> str:
    """The header line of a picture: "Q: " and the question on one line ("" when there is no question)."""
    line = " ".join(prompt.split())
    return f"Q: {line}" if line else ""


def draw_header(draw: ImageDraw.ImageDraw, text: str, width: int, height: int = HEADER_HEIGHT,
                font_size: int = 26) -> int:  # fmt: skip
    """Draw ``text`` (cut with an ellipsis to fit) on a band across the top; returns the band's height."""
    draw.rectangle((0, 0, width - 1, height - 1), fill=HEADER_BACKGROUND)
    draw.line((0, height - 1, width - 1, height - 1), fill=BORDER)
    header_font = font(font_size)
    draw.text((30, height / 2), _fit(draw, text, header_font, width - 60), fill=HEADER_INK, font=header_font,
              anchor="lm")  # fmt: skip
    return height


def legend_symbols(trajectory: Trajectory) -> list[tuple[str, str]]:
    """(short name, meaning) for each of SYMBOLS that the answer's boxes show, in SYMBOLS order."""
    shown = {box_label(text) for text in trajectory.texts}
    return [(name, meaning) for name, meaning in SYMBOLS.items() if name in shown]


def _draw_boxes(draw: ImageDraw.ImageDraw, trajectory: Trajectory, step: int, size: tuple[int, int],
                top: int = 0) -> None:  # fmt: skip
    """The box canvas in the part of the frame below ``top`` pixels."""
    width, height = size
    symbols = legend_symbols(trajectory)
    margin, title_h, legend_h = 30, 70, 110 if symbols else 70
    n, num_steps = trajectory.gen_length, trajectory.num_steps
    draw.text((width / 2, top + margin + 10), f"Generation Step {step}", fill=HEADER_INK, font=font(32),
              anchor="mt")  # fmt: skip
    # Largest boxes (at most 120 px wide, 2.4:1) whose grid fits between the title and the legend.
    area_w, area_h = width - 2 * margin, height - top - 2 * margin - title_h - legend_h
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
    grid_top = top + margin + title_h + max(0, (area_h - (rows * (box_h + gap) - gap)) / 3)
    label_font = font(max(9, box_h // 2 - 2))
    shown = trajectory.revealed(step)
    for pos in range(n):
        x = left + (pos % per_row) * (box_w + gap)
        y = grid_top + (pos // per_row) * (box_h + gap)
        if shown[pos]:
            fill = box_colour(trajectory.reveal_step[pos], num_steps)
            label, ink = box_label(trajectory.texts[pos]), ink_on(fill)
        else:
            fill, label, ink = MASK_BACKGROUND, "Mask", MASK_TEXT
        draw.rounded_rectangle((x, y, x + box_w, y + box_h), radius=box_h // 4, fill=fill, outline=BORDER)
        draw.text((x + box_w / 2, y + box_h / 2), _fit(draw, label, label_font, box_w - 8), fill=ink,
                  font=label_font, anchor="mm")  # fmt: skip
    # Legend, first row: the mask, then the colours of steps 1, N/4, N/2, 3N/4 and N.
    entries = [("Mask", MASK_BACKGROUND)] + [(f"Step {m}", box_colour(m, num_steps)) for m in legend_steps(num_steps)]
    swatch, y = 28, height - margin - legend_h + 35
    entry_w = 160
    x = (width - entry_w * len(entries)) / 2
    for label, colour in entries:
        draw.rounded_rectangle((x, y - swatch / 2, x + swatch, y + swatch / 2), radius=5, fill=colour, outline=BORDER)
        draw.text((x + swatch + 8, y), label, fill="#334155", font=font(18), anchor="lm")
        x += entry_w
    # Second row: what the short names in the boxes stand for, each in a small white box.
    legend_font, symbol_font, symbol_w, symbol_h, spacing = font(18), font(16), 46, 26, 36
    y += 42
    widths = [symbol_w + 8 + draw.textlength(meaning, font=legend_font) for _, meaning in symbols]
    x = (width - sum(widths) - spacing * (len(widths) - 1)) / 2
    for (name, meaning), entry in zip(symbols, widths):
        draw.rounded_rectangle((x, y - symbol_h / 2, x + symbol_w, y + symbol_h / 2), radius=5, fill="white",
                               outline=BORDER)  # fmt: skip
        draw.text((x + symbol_w / 2, y), name, fill=HEADER_INK, font=symbol_font, anchor="mm")
        draw.text((x + symbol_w + 8, y), meaning, fill="#334155", font=legend_font, anchor="lm")
        x += entry + spacing


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


def _draw_text(draw: ImageDraw.ImageDraw, trajectory: Trajectory, step: int, size: tuple[int, int],
               top: int = 0) -> None:  # fmt: skip
    """The flowing answer in the part of the frame below ``top`` pixels."""
    width, height = size
    margin = 40
    text_font = font(30)
    line_h = 44
    x, y = margin, top + margin
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
    """Frames of the given steps (default: 6 evenly spaced), tiled ``columns`` wide, each scaled by ``scale``,
    under one header line with the question (frames scaled down would make six small copies of it)."""
    steps = steps if steps is not None else default_grid_steps(trajectory.num_steps)
    w, h = SIZES[style]
    w, h = int(w * scale), int(h * scale)
    rows = -(-len(steps) // columns)
    gap = 10
    width = columns * w + (columns + 1) * gap
    text = header_text(trajectory.prompt)
    top = HEADER_HEIGHT if text else 0
    grid = Image.new("RGB", (width, top + rows * h + (rows + 1) * gap), "#E2E8F0")
    if text:
        draw_header(ImageDraw.Draw(grid), text, width)
    for i, step in enumerate(steps):
        frame = render_frame(trajectory, step, style, header=False).resize((w, h), Image.LANCZOS)
        grid.paste(frame, (gap + (i % columns) * (w + gap), top + gap + (i // columns) * (h + gap)))
    return grid


def save_gif(trajectory: Trajectory, path: str, style: str = "box", frame_ms: int = 150, hold_ms: int = 2000,
             scale: float = 0.6) -> None:  # fmt: skip
    """Animated GIF of frames 0..num_steps, ``frame_ms`` each, the final frame held ``hold_ms``; loops."""
    w, h = SIZES[style]
    size = (int(w * scale), int(h * scale))
    frames = [render_frame(trajectory, k, style).resize(size, Image.LANCZOS) for k in range(trajectory.num_steps + 1)]
    palette = _gif_palette(frames, trajectory.num_steps, style)
    frames = [_to_palette(f, palette) for f in frames]
    durations = [frame_ms] * (len(frames) - 1) + [max(hold_ms, frame_ms)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)


def _gif_palette(frames: list[Image.Image], num_steps: int, style: str) -> list[tuple[int, int, int]]:
    """One palette of 256 RGB colours for every frame, so a colour means the same step in each of them: the
    exact colours the pictures use (white, header, masks, every step's shade), so none is lost to a nearby
    shade where it covers a few pixels only (a legend swatch), then the most common others (anti-aliasing,
    text)."""
    if style == "box":
        steps = [box_colour(k, num_steps) for k in range(1, num_steps + 1)]
        colours = ["#FFFFFF", HEADER_BACKGROUND, MASK_BACKGROUND, MASK_TEXT, BORDER] + steps
    else:
        steps = [text_colour(k, num_steps) for k in range(1, num_steps + 1)]
        colours = ["#FFFFFF", HEADER_BACKGROUND, TEXT_MASK] + steps
    exact = list(dict.fromkeys(_hex(c) for c in colours))
    w, h = frames[0].size
    picked = frames[:: max(1, len(frames) // 8)] + [frames[-1]]
    sheet = Image.new("RGB", (w * len(picked), h))
    for i, frame in enumerate(picked):
        sheet.paste(frame, (i * w, 0))
    found = sheet.quantize(colors=256 - len(exact), method=Image.Quantize.MEDIANCUT).getpalette()
    others = [tuple(found[i : i + 3]) for i in range(0, len(found), 3)]
    others = [rgb for rgb in dict.fromkeys(others) if rgb not in exact]
    return exact + others[: 256 - len(exact)]


def _to_palette(frame: Image.Image, palette: list[tuple[int, int, int]]) -> Image.Image:
    """An RGB frame as a "P" image on ``palette``, each pixel taking its nearest palette colour, so an exact
    colour keeps itself (Pillow's quantize looks pixels up by bins of 4 levels per channel and gave white
    pixels a near-white, and a step's shade the next step's)."""
    rgb = np.asarray(frame, dtype=np.int64)  # (H, W, 3)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W)
    colours, inverse = np.unique(packed.ravel(), return_inverse=True)  # (U,), (H*W,)
    colours = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)  # (U, 3)
    table = np.asarray(palette, dtype=np.int64)  # (P, 3)
    nearest = ((colours[:, None, :] - table[None, :, :]) ** 2).sum(-1).argmin(1)  # (U,)
    image = Image.fromarray(nearest[inverse].astype(np.uint8).reshape(packed.shape), mode="P")
    image.putpalette([c for colour in palette for c in colour])
    return image


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
                    spans.append(f'<span class="tok" style="background:{bg};color:{ink_on(bg)}" '
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
        legend = "".join(f'<span class="tok" style="background:{c};color:{ink_on(c)}">{label}</span>'
                         for label, c in entries)  # fmt: skip
        symbols = "".join(f'<span class="symbol"><span class="tok">{html.escape(name)}</span> {meaning}</span>'
                          for name, meaning in legend_symbols(trajectory))  # fmt: skip
        legend = f'<div class="legend">{legend}</div>' + (f'<div class="legend">{symbols}</div>' if symbols else "")
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
# Play runs from the step shown to the last and turns into Pause meanwhile; Play on the last step starts
# again from step 0; moving the slider pauses.
HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Genjo denoising: {prompt}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 16px;
        color: #0f172a; }}
.frame[hidden] {{ display: none !important; }}
.frame-box {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.frame-box h2 {{ width: 100%; text-align: center; }}
.frame-text {{ font-size: 28px; line-height: 1.5; white-space: pre-wrap; overflow-wrap: anywhere; }}
.tok {{ display: inline-flex; align-items: center; justify-content: center; width: 120px; height: 50px;
        border-radius: 12px; border: 1px solid #cbd5e1; overflow: hidden; }}
.mask {{ background: {mask}; color: {mask_text}; }}
.mask-block {{ display: inline-block; width: 14px; height: 0.9em; margin: 0 2px; border-radius: 3px;
               background: {mask}; vertical-align: -0.1em; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 10px; margin-top: 1.5em; }}
.symbol {{ display: inline-flex; align-items: center; gap: 6px; margin-right: 10px; }}
.symbol .tok {{ width: 46px; height: 28px; border-radius: 6px; }}
.controls {{ margin: 1em 0; display: flex; gap: 1em; align-items: center; }}
#play {{ min-width: 5em; }}
@media (max-width: 600px) {{ .frame-box .tok {{ width: 84px; height: 40px; }} .frame-text {{ font-size: 22px; }} }}
</style></head><body>
<p><b>Q:</b> {prompt}<br><b>Answer:</b> {answer}</p>
<div class="controls"><button id="play" type="button">Play</button>
<input id="step" type="range" min="0" max="{last}" value="{last}" style="flex:1"><span id="label"></span></div>
{frames}
{legend}
<script>
const frames = document.querySelectorAll('.frame'), slider = document.getElementById('step');
const play = document.getElementById('play'), last = {last};
let timer = null;
function show(k) {{ frames.forEach(f => f.hidden = +f.dataset.step !== k);
  slider.value = k; document.getElementById('label').textContent = 'step ' + k + ' / ' + last; }}
function pause() {{ clearInterval(timer); timer = null; play.textContent = 'Play'; }}
function advance() {{ const k = +slider.value + 1; show(k); if (k >= last) pause(); }}
play.onclick = () => {{
  if (timer !== null) {{ pause(); return; }}
  if (+slider.value >= last) show(0);
  play.textContent = 'Pause';
  timer = setInterval(advance, 150);
}};
slider.oninput = () => {{ pause(); show(+slider.value); }};
show(last);
</script></body></html>
"""
