"""Screen overlays burned into every frame: scanner text, frame counter, depth scale, grey bar."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hico.synth.imaging import _Imaging
from hico.synth.motion import _ASSUMED_FPS
from hico.synth.probe import _Layout, _Probe


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default()


def _text_right(draw: ImageDraw.ImageDraw, xy, text: str, fill: int) -> None:
    """Text whose right end is at x (no anchors: the bitmap fallback font lacks them)."""
    width = draw.textlength(text, font=_font())
    draw.text((xy[0] - width, xy[1]), text, fill=fill, font=_font())


_SITES = ("HICO GENERAL", "CITY HOSPITAL", "ST. ELSEWHERE", "SYNTH MED CTR", "NORTH CLINIC",
          "RIVERSIDE US", "DEPT RADIOLOGY", "ICU BAY 4", "ED POCUS", "OUTPATIENT 2")
_PRESETS = ("ABD", "LUNG", "GEN", "FAST", "PEN", "RES", "THI", "STD")


class _Overlay:
    """Scanner text, depth scale, focus marker and grey bar, drawn supersampled and burned in."""

    def __init__(self, rng, probe: _Probe, layout: _Layout, render_hw, frames: int, im: _Imaging):
        self.v = layout.v
        self.render_hw = render_hw
        h, w = render_hw
        v = self.v
        self.vsize = (w * v, h * v)
        self.level = int(rng.integers(190, 256))
        self.frames = frames
        canvas = Image.new("L", self.vsize, 0)
        draw = ImageDraw.Draw(canvas)
        font = _font()
        lvl = self.level
        date = f"{int(rng.integers(2015, 2025))}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}"
        clock = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        site = str(rng.choice(_SITES))
        preset = str(rng.choice(_PRESETS))
        draw.text((3, 1), f"{site}  {date} {clock}", fill=lvl, font=font)
        line2 = f"{probe.name} {probe.freq:.1f}MHz Gn {im.gain} D {probe.depth:.0f}cm {preset}"
        if rng.random() < 0.5:
            line2 += f" DR{int(round(im.dyn_range))}"
        draw.text((3, 14), line2, fill=lvl, font=font)
        mi = f"MI {rng.uniform(0.4, 1.4):.1f}  TIS {rng.uniform(0.1, 1.0):.1f}"
        self.style = int(rng.integers(0, 3))
        self.counter_xy = (w * v - 3, 1)
        _text_right(draw, (w * v - 3, 14), mi, lvl)

        # Depth scale along the right edge of the image, ticks every cm, labels every 5 cm.
        ppc = layout.ppc * v
        z_top, z_bot, half = probe.extent()
        xs = (layout.x_c + half * layout.ppc) * v + 6
        xs = min(xs, w * v - 14)
        y0 = layout.y_0 * v
        draw.line([(xs, y0), (xs, y0 + probe.depth * ppc)], fill=lvl // 2, width=1)
        for k in range(int(probe.depth) + 1):
            y = y0 + k * ppc
            major = k % 5 == 0
            draw.line([(xs, y), (xs + (6 if major else 3), y)], fill=lvl, width=1)
            if major and k > 0:
                draw.text((xs + 7, y - 5), str(k), fill=lvl, font=font)
        yf = y0 + im.focus * ppc
        draw.polygon([(xs - 1, yf), (xs - 6, yf - 3), (xs - 6, yf + 3)], fill=lvl)

        # Grey calibration bar on the left.
        gx0, gx1 = 3, 3 + max(4, int(0.012 * w * v))
        gy0, gy1 = int(0.35 * h * v), int(0.65 * h * v)
        ramp = np.linspace(255, 0, gy1 - gy0).astype(np.uint8)[:, None]
        canvas.paste(Image.fromarray(np.repeat(ramp, gx1 - gx0, axis=1)), (gx0, gy0))
        draw.rectangle([gx0 - 1, gy0 - 1, gx1, gy1], outline=lvl // 2)

        # Orientation marker beside the top-left of the image.
        if probe.convex:
            mx = (layout.x_c - probe.radius * math.sin(probe.half_angle) * layout.ppc) * v - 8
            my = (layout.y_0 - probe.radius * (1 - math.cos(probe.half_angle)) * layout.ppc) * v + 4
        else:
            mx = (layout.x_c - probe.width / 2 * layout.ppc) * v - 8
            my = layout.y_0 * v + 4
        mx = max(mx, 4)
        draw.ellipse([mx - 3, my - 3, mx + 3, my + 3], fill=lvl)
        self.static = self._shrink(canvas)

    def _shrink(self, canvas: Image.Image) -> np.ndarray:
        if self.v > 1:
            canvas = canvas.resize((self.render_hw[1], self.render_hw[0]), Image.Resampling.BOX)
        return np.asarray(canvas, dtype=np.float32)

    def _counter_text(self, t: int) -> str:
        if self.style == 0:
            return f"{t + 1}/{self.frames}"
        if self.style == 1:
            return f"F{t + 1:03d}"
        return f"{t / _ASSUMED_FPS:05.2f}s"

    def frame(self, t: int) -> np.ndarray:
        canvas = Image.new("L", self.vsize, 0)
        _text_right(ImageDraw.Draw(canvas), self.counter_xy, self._counter_text(t), self.level)
        return np.maximum(self.static, self._shrink(canvas))

    def dynamic_mask(self, height: int, width: int, scale: int) -> np.ndarray:
        """Where the frame counter may draw, at the output size."""
        h, w = self.render_hw
        mask = np.zeros((h, w), bool)
        mask[: max(1, math.ceil(14 / self.v)), w // 2:] = True
        if scale > 1:
            mask = mask.reshape(height, scale, width, scale).any(axis=(1, 3))
        return mask
