"""Find the ultrasound image in a scanner screen capture and mask what is not tissue.

Clips exported from scanners (mp4 screen grabs, DICOM) show more than tissue: a black
frame around the imaging sector (a convex fan or a linear rectangle) and burned-in
overlays (text lines, a frame counter, a depth scale, a grey calibration bar, an
orientation dot, coloured annotations). :func:`detect_screen` finds them;
:meth:`ScreenMask.apply` sets everything but tissue to black.

How, in short:

1. Signal is anything above the noise of the black frame. With several frames an overlay
   is what never changes (speckle always does), so static pixels are dropped from it; a
   single frame relies on shape alone. Small dark specks are filled (dim tissue is
   speckled with black) and an opening removes text, ticks and dots and cuts them off
   the image they touch.
2. The sector is fitted as a shape, not taken pixel by pixel, because fluid, rib shadows
   and effusions are as black as the frame around the image and may reach its edges.
   A screen with two or four images side by side or stacked (dual and quad views) is cut
   into one region per image along the empty bands between them, and each is fitted alone.
   A linear image is the bounding rectangle of the signal. A convex fan is the annular
   sector, symmetric about the vertical through its apex, whose outline best explains
   the signal's outline (the skin arc, the straight sides, the deep arc). The far end of
   either is then pushed out over dim, sparse echoes. When neither model fits, the
   convex hull of the signal is the sector.
3. Overlays are everything lit outside the sector, static pixels inside it, and colour in
   an otherwise grey image (unless so much of the sector is colour that it is Doppler).
   A single frame gives no cue to grey text drawn over the tissue itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from hico.errors import HiCoError

log = logging.getLogger(__name__)

_STAT_FRAMES = 16  # frames sampled, evenly spaced, for the per-pixel statistics
_SIGNAL_MARGIN = 15  # grey levels above the frame's black that count as signal
_STATIC_RANGE = 4  # grey levels a burned-in overlay may flicker by under video compression
_MOVING_FRACTION = 0.2  # below this share of changing signal pixels a clip is treated as a still
_DARK_BORDER = 0.2  # share of the image border that must be black for a frame to exist at all
_COLOUR_RANGE = 32  # max - min over R, G, B above which a pixel is colour (codec noise is <= 8)
_DOPPLER_FRACTION = 0.1  # this much colour inside the sector makes it Doppler, not annotation
_MIN_SECTOR = 0.02  # a sector smaller than this share of the image is a failed detection
_RECT_FLAT = 0.7  # share of columns whose top is level for the sector to be a rectangle
_FIT_POINTS = 500  # outline pixels a fan is fitted to (a sample of them in large images)
_FIT_HEIGHTS = 160  # trial apex heights above the image, spaced geometrically
_FAINT_DENSITY = 0.05  # share of faint pixels in a row (or arc) that still counts as image
_VIEW_AREA = 0.3  # a view of a dual or quad screen holds at least this share of the largest view's image,
_VIEW_ASPECT = 0.5  # is at least half as wide as tall (strips between rib shadows are narrower)
_VIEW_DEPTH = 0.6  # and reaches at least this share of the deepest view's height
_FLAT_RANGE = 2  # grey levels a drawn panel varies by within 5 x 5 pixels (speckle varies far more)
_BAR_WIDTH = 0.06  # a colour scale bar is at most this share of the sector's width, from its edge,
_BAR_ASPECT = 2.5  # and at least this many times as tall as wide
_PANEL_AREA = 0.01  # a flat region touching the edge and covering this share of the screen is a panel
_PANEL_HOLE = 0.02  # holes in a panel up to this share of the screen are its text, larger ones an image
_BAND = 0.25  # a panel at most this share of the screen deep (or wide) is a band: its whole box is masked


@dataclass(frozen=True)
class ScreenMask:
    """Where the tissue is on a screen capture; every mask is bool (H, W).

    ``sector``: the imaging sector (fan or rectangle), shadows and fluid included.
    ``overlay``: burned-in overlay pixels found anywhere (text, scales, bars, annotations).
    ``tissue``: ``sector`` minus ``overlay``; never empty.
    ``method``: ``"temporal"`` (cues from several frames), ``"single-frame"`` (spatial cues
    only) or ``"none"`` (no screen found: everything counts as tissue).
    """

    tissue: np.ndarray
    sector: np.ndarray
    overlay: np.ndarray
    method: str

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` (T, H, W) or (T, H, W, C), any dtype, with pixels outside ``tissue`` set to 0.

        Returns a new array of the same shape and dtype.
        """
        frames = np.asarray(frames)
        if frames.ndim not in (3, 4) or frames.shape[1:3] != self.tissue.shape:
            raise HiCoError(
                f"The screen mask is {self.tissue.shape[0]}x{self.tissue.shape[1]} pixels but the "
                f"frames have shape {frames.shape}; detect the mask on the same clip."
            )
        keep = self.tissue if frames.ndim == 3 else self.tissue[:, :, None]
        return np.where(keep, frames, np.zeros((), frames.dtype))

    def describe(self) -> str:
        """What was masked, in words (Diagnose's "screen mask: ..."): names what was applied."""
        overlay = (self.overlay & ~self.tissue).mean()
        outside = (~self.sector).mean()
        if self.method == "none":
            if overlay > 0:
                return (f"overlays only ({100 * overlay:.1f}% of the screen: text, marks, panels); "
                        f"no imaging sector found, so nothing else was masked")
            return "nothing masked (no imaging sector or overlay found)"
        cue = "from the clip's motion" if self.method == "temporal" else "from a single frame"
        return (f"sector found {cue}: border {100 * outside:.0f}% and overlays {100 * overlay:.1f}% "
                f"of the screen masked")


def detect_screen(frames: np.ndarray) -> ScreenMask:
    """Find the imaging sector and the burned-in overlays of a clip or a still.

    ``frames``: uint8 (T, H, W, C) with C in {1, 3}, or (T, H, W); T = 1 for a still.
    With several frames that change, temporal cues are used; otherwise spatial ones.
    """
    clip = _as_clip(frames)
    sample = clip[np.linspace(0, len(clip) - 1, min(len(clip), _STAT_FRAMES)).round().astype(int)]
    brightest, colour = _brightness_and_colour(sample)
    high, low = brightest.max(axis=0), brightest.min(axis=0)

    threshold, faint, framed = _levels(high)
    # Flat panels (a banner with the site's name, a menu bar) are lit but carry no speckle: they
    # are overlays, and must not be taken for part of the image when its shape is fitted.
    panels = _flat_panels(brightest[0], threshold)
    lit = (high > threshold) & ~panels
    static = lit & (high - low <= _STATIC_RANGE)
    # A lone unchanging pixel is a coincidence in dim speckle; burned-in marks have strokes.
    static &= ndimage.convolve(static.view(np.uint8), np.ones((3, 3), np.uint8), mode="constant") > 1
    moving = len(sample) > 1 and (lit & ~static).sum() > _MOVING_FRACTION * max(1, lit.sum())
    if not moving:
        static = np.zeros_like(lit)

    sector = _find_sector((high > faint) & ~static & ~panels) if framed else None
    if sector is None:
        method = "none"
        sector = np.ones(high.shape, bool)
    else:
        method = "temporal" if moving else "single-frame"
    overlay = _find_overlay(lit, static, colour & ~panels, sector) | panels
    tissue = sector & ~overlay
    if not tissue.any():  # never mask the whole image
        method, tissue = "none", np.ones_like(sector)
    log.debug("Screen: %s, sector %.1f%%, overlay %.1f%% of the image.",
              method, 100 * sector.mean(), 100 * overlay.mean())
    return ScreenMask(tissue=tissue, sector=sector, overlay=overlay, method=method)


def mask_frames(frames: np.ndarray) -> tuple[np.ndarray, ScreenMask]:
    """Detect the screen layout of ``frames`` (as :func:`detect_screen`) and black out non-tissue.

    Returns the masked frames (same shape and dtype) and the :class:`ScreenMask`.
    """
    mask = detect_screen(frames)
    return mask.apply(frames), mask


# --------------------------------------------------------------------------------------------
# steps


def _as_clip(frames) -> np.ndarray:
    """uint8 (T, H, W, C) view of the accepted input shapes, or a HiCoError."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise HiCoError(f"Screen detection needs 8-bit frames (uint8), not {frames.dtype}.")
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or 0 in frames.shape:
        raise HiCoError(
            f"Screen detection needs frames shaped (T, H, W) or (T, H, W, C) with C 1 or 3, "
            f"not {frames.shape}."
        )
    return frames


def _brightness_and_colour(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The brightest channel of ``sample`` (uint8 (S, H, W, C)) as uint8 (S, H, W), and the
    pixels that are colour in any frame, bool (H, W). Colour annotations count as bright."""
    if sample.shape[3] == 1:
        return sample[..., 0], np.zeros(sample.shape[1:3], bool)
    red, green, blue = sample[..., 0], sample[..., 1], sample[..., 2]
    brightest = np.maximum(np.maximum(red, green), blue)
    darkest = np.minimum(np.minimum(red, green), blue)
    return brightest, ((brightest - darkest) > _COLOUR_RANGE).any(axis=0)


def _flat_panels(frame: np.ndarray, threshold: float) -> np.ndarray:
    """Flat, lit regions touching the screen's edge (banners, menu bars) with what they enclose
    (their text), bool (H, W); ``frame``: uint8 (H, W), one frame's brightest channel. Tissue is
    speckled, so a lit region whose 5 x 5 neighbourhoods vary by at most _FLAT_RANGE grey levels
    over at least _PANEL_AREA of the screen is drawn, not imaged."""
    spread = ndimage.maximum_filter(frame, 5) - ndimage.minimum_filter(frame, 5)
    flat = (spread <= _FLAT_RANGE) & (frame > threshold)
    labels, count = ndimage.label(flat)
    if count == 0:
        return np.zeros(frame.shape, bool)
    areas = np.bincount(labels.ravel())
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = np.zeros(count + 1, bool)
    keep[edge] = True
    keep &= areas >= _PANEL_AREA * frame.size
    keep[0] = False
    panels = keep[labels]
    if not panels.any():
        return panels
    # The panel's text: a band (a banner or menu bar, at most _BAND of the screen deep) covers its
    # bounding box, text touching the screen's edge included; any other panel the small holes it
    # encloses (text), never a large one (the image a grey surround frames).
    labels, _ = ndimage.label(panels)
    holes, _ = ndimage.label(ndimage.binary_fill_holes(panels) & ~panels)
    small = np.bincount(holes.ravel()) <= _PANEL_HOLE * frame.size
    small[0] = False
    filled = panels | small[holes]
    height, width = frame.shape
    for sl in ndimage.find_objects(labels):
        if sl[0].stop - sl[0].start <= _BAND * height or sl[1].stop - sl[1].start <= _BAND * width:
            filled[sl] = True
    return filled


def _levels(high: np.ndarray) -> tuple[float, float, bool]:
    """Grey levels above which a pixel is clearly lit and faintly lit, and whether the image
    border is mostly black (else there is no frame around the image).

    ``high``: uint8 (H, W), the brightest value of each pixel over time. Clearly lit marks
    overlays; faintly lit is anything above the noise of the black frame, the deep, dim
    end of an image included.
    """
    def ring(image):
        return np.concatenate([image[:2].ravel(), image[-2:].ravel(),
                               image[:, :2].ravel(), image[:, -2:].ravel()])

    smooth = ring(ndimage.uniform_filter(high, 3))  # speckle alone must not look black
    black = float(np.percentile(smooth, 5))
    threshold = black + _SIGNAL_MARGIN
    framed = bool(np.mean(smooth <= threshold) >= _DARK_BORDER)
    raw = ring(high)
    dark = raw[raw <= threshold]
    faint = float(np.percentile(dark, 99)) if dark.size else threshold
    return threshold, faint, framed


def _find_sector(signal: np.ndarray, split: bool = True) -> np.ndarray | None:
    """The imaging sector, bool (H, W), or None if there is none.

    ``signal``: bool (H, W), pixels above the noise of the black frame that are not known
    overlays. Deep, dim tissue is only partly above it: its dark specks are filled to find
    the image's shape, and its density decides how far the image reaches. With ``split``, a
    screen of several images (dual, quad) gets a sector per image (:func:`_view_regions`).
    """
    h, w = signal.shape
    size = 2 * max(1, round(min(h, w) / 64)) + 1
    filled = _fill_specks(signal, 4 * size * size)
    # An opening removes text, ticks and dots, and cuts them off the image they touch.
    eroded = ndimage.minimum_filter(filled.view(np.uint8), size, mode="constant", cval=0)
    core = ndimage.maximum_filter(eroded, size, mode="constant", cval=0) > 0
    core = _image_components(core)
    if core is None or core.sum() < _MIN_SECTOR * signal.size:
        return None
    regions = _view_regions(core) if split else []
    if len(regions) > 1:
        sector = np.zeros(signal.shape, bool)
        for rows, cols in regions:
            part = _find_sector(signal[rows, cols], split=False)
            if part is not None:
                sector[rows, cols] = part
        return sector if sector.any() else None
    gap = max(2, size // 2)
    box = _rectangle(core)
    if box is not None:
        sector = _extend_rectangle(box, signal, gap)
    else:
        fan = _fan(core)
        sector = _extend_fan(fan, signal, gap) if fan is not None else _hull(core)
    if sector.mean() > 0.98:
        return None  # no frame around the image after all
    return sector


def _view_regions(core: np.ndarray) -> list[tuple[slice, slice]]:
    """The regions of a dual or quad screen, one per image, or [] for one image.

    ``core`` (bool (H, W)) is cut at the middle of the one empty band of columns between its
    parts (a dual view), and each half at the middle of an empty band of rows when both halves
    have one at about the same height (a quad view). A cut by rows alone is not taken (fluid splits one image that way: the body wall above an effusion,
    the lung below), nor are parts unlike views of one screen (one much smaller or shallower than
    another, or narrow strips between rib shadows)."""
    def gaps(occupied: np.ndarray) -> list[tuple[int, int]]:
        """(first, last + 1) of each empty band between occupied entries."""
        filled = np.flatnonzero(occupied)
        return [(left + 1, right) for left, right in zip(filled[:-1], filled[1:]) if right - left > 1]

    height, width = core.shape
    between = gaps(core.any(axis=0))
    if len(between) != 1:
        return []
    middle = sum(between[0]) // 2
    columns = [(0, middle), (middle, width)]
    # a quad screen: an empty band of rows in each half at about the same height (the widest such
    # pair: fluid inside one image makes bands of its own, at a height the other half does not share)
    left, right = (gaps(core[:, x0:x1].any(axis=1)) for x0, x1 in columns)
    pairs = [(min(a[1] - a[0], b[1] - b[0]), sum(a) // 2, sum(b) // 2) for a in left for b in right
             if abs(sum(a) - sum(b)) / 2 < 0.1 * height]
    layouts = [[[(0, height)], [(0, height)]]]  # dual
    if pairs:
        _, cut_left, cut_right = max(pairs)
        layouts.insert(0, [[(0, cut_left), (cut_left, height)], [(0, cut_right), (cut_right, height)]])
    for rows in layouts:  # quad first; a quad whose parts are unlike views may still be a dual
        regions = [(slice(y0, y1), slice(x0, x1)) for (x0, x1), bands in zip(columns, rows) for y0, y1 in bands]
        if _like_views(core, regions):
            return regions
    return []


def _like_views(core: np.ndarray, regions: list[tuple[slice, slice]]) -> bool:
    """Whether the parts of ``core`` in these regions look like the images of one screen."""
    sizes = []
    for region in regions:
        ys, xs = np.nonzero(core[region])
        if ys.size == 0:
            return False
        sizes.append((ys.size, np.ptp(xs) + 1, np.ptp(ys) + 1))  # pixels, width, height
    area, wide, deep = (np.array(v, float) for v in zip(*sizes))
    return bool(area.min() >= _VIEW_AREA * area.max() and (wide / deep).min() >= _VIEW_ASPECT
                and deep.min() >= _VIEW_DEPTH * deep.max())


def _fill_specks(signal: np.ndarray, max_area: int) -> np.ndarray:
    """``signal`` (bool (H, W)) with its dark specks of at most ``max_area`` pixels filled.

    Dark speckle in dim tissue would otherwise break the image up under the opening;
    the black around text and scales is one large region and stays.
    """
    labels, _ = ndimage.label(~signal)
    small = np.bincount(labels.ravel()) <= max_area
    small[0] = False
    return signal | small[labels]


def _image_components(core: np.ndarray) -> np.ndarray | None:
    """The pieces of ``core`` (bool (H, W)) big enough to be parts of the image, or None.

    Fluid and rib shadows can split the image (the body wall above an effusion, the lung
    below it; strips between shadows), so every piece of at least 5% of the largest counts.
    """
    labels, count = ndimage.label(core, structure=np.ones((3, 3)))
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    return (areas >= 0.05 * areas.max())[labels]


def _top_rows(core: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns that hold ``core`` pixels (int) and the first row of each (int)."""
    cols = np.nonzero(core.any(axis=0))[0]
    return cols, core[:, cols].argmax(axis=0)


def _rectangle(core: np.ndarray) -> tuple[int, int, int, int] | None:
    """Rows and columns (top, bottom, left, right; inclusive) of the bounding box of ``core``
    when its top edge is level and its sides do not widen downwards (a linear probe), else None.
    """
    cols, tops = _top_rows(core)
    rows = np.nonzero(core.any(axis=1))[0]
    tolerance = max(2, round(0.02 * core.shape[0]))
    if np.mean(tops <= tops.min() + tolerance) < _RECT_FLAT:
        return None
    upper = np.nonzero(core[rows[0]:rows[0] + 4 * tolerance].any(axis=0))[0]
    if upper[0] > cols[0] + tolerance or upper[-1] < cols[-1] - tolerance:
        return None  # wider below than at the skin: a fan with a flat top
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _extend_rectangle(box: tuple[int, int, int, int], faint: np.ndarray, gap: int) -> np.ndarray:
    """The rectangle ``box`` as bool (H, W), lengthened down over rows of ``faint`` signal."""
    top, bottom, left, right = box
    density = faint[bottom + 1:, left:right + 1].mean(axis=1)
    bottom += _reach(density, gap)
    sector = np.zeros(faint.shape, bool)
    sector[top:bottom + 1, left:right + 1] = True
    return sector


def _reach(density: np.ndarray, gap: int) -> int:
    """How many steps of ``density`` (float (N,), the share of faint pixels per step outwards)
    still belong to the image: up to the last step with some signal before ``gap`` without."""
    reach, empty = 0, 0
    for step, value in enumerate(density, start=1):
        if value >= _FAINT_DENSITY:
            reach, empty = step, 0
        else:
            empty += 1
            if empty > gap:
                break
    return reach


@dataclass(frozen=True)
class _Fan:
    """An annular sector, symmetric about the vertical through its apex: the apex (column,
    row), inner and outer radius (pixels), and half the opening angle (radians)."""

    x: float
    y: float
    r0: float
    r1: float
    half_angle: float

    def area(self) -> float:
        return self.half_angle * (self.r1 ** 2 - self.r0 ** 2)

    def polar(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Radius and angle from straight down (absolute) of every pixel, float32 (H, W) each."""
        dx = np.arange(shape[1], dtype=np.float32) - np.float32(self.x)
        dy = np.arange(shape[0], dtype=np.float32)[:, None] - np.float32(self.y)
        return np.hypot(dx, dy), np.abs(np.arctan2(dx, dy))


def _fan(core: np.ndarray) -> _Fan | None:
    """The annular sector around an apex above the image that best explains ``core``'s outline.

    For a trial apex, the smallest symmetric annular sector holding every pixel of ``core``
    (bool (H, W)) is fixed; the apex kept is the one for which most of ``core``'s outline
    lies on that sector's outline (the skin arc, the straight sides, the deep arc) for the
    area it covers. Shadows and fluid only move parts of the outline inwards, so they do
    not pull the fit. None when the best sector is over twice the area of ``core``'s hull.
    """
    h, w = core.shape
    cols, tops = _top_rows(core)
    half = len(cols) // 2
    if half < 4:
        return None
    # The apex column is near the midpoint of the two upper corners (the highest columns).
    left = cols[:half][tops[:half] == tops[:half].min()].mean()
    right = cols[half:][tops[half:] == tops[half:].min()].mean()
    top = float(tops.min())
    tol = max(1.0, min(h, w) / 256)
    rr, cc = np.nonzero(core & ~ndimage.binary_erosion(core))
    every = max(1, len(rr) // _FIT_POINTS)
    rr, cc = rr[::every].astype(np.float32), cc[::every].astype(np.float32)
    # Coarse, then fine around the best: columns in steps of 2 tol, heights above the top
    # spaced geometrically (a far apex needs less precision than a near one).
    spread = max(3 * tol, 0.04 * (cols[-1] - cols[0]))
    xs = 0.5 * (left + right) + np.arange(-spread, spread + tol, 2 * tol)
    heights = np.geomspace(1, 4 * max(h, w), _FIT_HEIGHTS)
    for _ in range(2):
        apex_x, height = (a.ravel() for a in np.meshgrid(xs, heights))
        score, params = _fan_score(rr, cc, apex_x, top - height, tol)
        k = int(score.argmax())
        fan = _Fan(float(apex_x[k]), float(top - height[k]), *map(float, params[:, k]))
        i = int(np.searchsorted(heights, height[k]))
        heights = np.linspace(heights[max(i - 1, 0)], heights[min(i + 1, len(heights) - 1)], 33)
        xs = fan.x + np.arange(-2 * tol, 2.25 * tol, tol / 4)
    try:
        hull_area = ConvexHull(np.stack([cc, rr], axis=1)).volume  # a 2-D hull's volume is its area
    except QhullError:
        return None
    return fan if fan.area() <= 2 * hull_area else None


def _extend_fan(fan: _Fan, faint: np.ndarray, gap: int) -> np.ndarray:
    """The sector of ``fan`` as bool (H, W), its deep arc pushed out over arcs of ``faint`` signal."""
    radius, angle = fan.polar(faint.shape)
    beside = angle <= fan.half_angle
    beyond = beside & (radius > fan.r1)
    steps = (radius[beyond] - fan.r1).astype(int)
    counts = np.bincount(steps, weights=faint[beyond], minlength=1)
    area = np.maximum(np.bincount(steps, minlength=1), 1)
    r1 = fan.r1 + _reach(counts / area, gap)
    return beside & (radius >= fan.r0) & (radius <= r1)


def _fan_score(rr: np.ndarray, cc: np.ndarray, apex_x: np.ndarray, apex_y: np.ndarray,
               tol: float) -> tuple[np.ndarray, np.ndarray]:
    """How well the smallest fan around each trial apex (float (K,)) that holds the outline
    pixels (rows ``rr``, columns ``cc``; float32 (N,)) explains them: how many lie on its
    outline, per unit of its area (a bigger fan must explain more of the outline).

    Returns the scores, float (K,), and the fans as float (3, K): inner and outer radius,
    half the opening angle.
    """
    dx = np.abs(cc[None, :] - apex_x[:, None].astype(np.float32))
    dy = rr[None, :] - apex_y[:, None].astype(np.float32)  # > 0: the apex is above the image
    # Squared radii and the tangent of the angle from vertical spare a root and an arctangent
    # per point and apex.
    radius2 = dx * dx + dy * dy
    slope = dx / dy
    r0, r1 = np.sqrt(radius2.min(axis=1)), np.sqrt(radius2.max(axis=1))
    t1 = slope.max(axis=1)
    side = (t1[:, None] * dy - dx) / np.sqrt(1 + t1 * t1)[:, None]  # distance inside the side
    on = ((radius2 < ((r0 + tol) ** 2)[:, None]) | (radius2 > (np.maximum(r1 - tol, 0) ** 2)[:, None])
          | (side < tol))
    half_angle = np.arctan(t1)
    area = half_angle * (r1 * r1 - r0 * r0)
    return on.sum(axis=1) / np.maximum(area, 1.0), np.stack([r0, r1, half_angle])


def _colour_bars(colour: np.ndarray, sector: np.ndarray) -> np.ndarray:
    """Colour scale bars beside a Doppler image, bool (H, W): pieces of ``colour`` (bool (H, W),
    inside ``sector``) that are tall, narrow strips (at least _BAR_ASPECT times as tall as wide, at
    most _BAR_WIDTH of the sector's width) within that width of the sector's left or right edge.
    Flow is drawn in blobs, not in upright bars at the image's side."""
    cols = np.flatnonzero(sector.any(axis=0))
    bars = np.zeros_like(colour)
    if cols.size == 0:
        return bars
    width = cols[-1] - cols[0] + 1
    labels, _ = ndimage.label(ndimage.binary_closing(colour, np.ones((3, 3), bool)))
    for index, (rows, columns) in enumerate(ndimage.find_objects(labels), start=1):
        tall, wide = rows.stop - rows.start, columns.stop - columns.start
        near_edge = columns.start - cols[0] <= _BAR_WIDTH * width or cols[-1] - columns.stop <= _BAR_WIDTH * width
        if near_edge and wide <= _BAR_WIDTH * width and tall >= _BAR_ASPECT * wide:
            bars[rows, columns] |= labels[rows, columns] == index
    return bars


def _hull(core: np.ndarray) -> np.ndarray:
    """The filled convex hull of ``core`` (bool (H, W)), as bool (H, W)."""
    edge = core & ~ndimage.binary_erosion(core)
    rr, cc = np.nonzero(edge)
    points = np.stack([cc, rr], axis=1).astype(np.float64)
    try:
        vertices = points[ConvexHull(points).vertices]
    except QhullError:  # a line or a point
        return core.copy()
    canvas = Image.new("L", (core.shape[1], core.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in vertices], fill=1, outline=1)
    return np.asarray(canvas, bool) | core


def _find_overlay(lit: np.ndarray, static: np.ndarray, colour: np.ndarray,
                  sector: np.ndarray) -> np.ndarray:
    """Burned-in overlay pixels, bool (H, W).

    ``lit``: pixels above black in some frame; ``static``: lit pixels that never change
    (empty for a still); ``colour``: pixels whose channels differ; ``sector``: the image.
    Everything lit outside the sector is overlay (holes filled: the grey bar's dark end),
    and so are static and colour pixels inside it, colour only while it is a small part.
    """
    overlay = ndimage.binary_fill_holes(lit & ~sector) | static
    inside_colour = colour & sector
    if inside_colour.sum() < _DOPPLER_FRACTION * sector.sum():
        overlay |= colour
    else:
        overlay |= colour & ~sector | _colour_bars(inside_colour, sector)
        log.debug("Screen: %.0f%% of the sector is colour; keeping it as Doppler.",
                  100 * inside_colour.sum() / sector.sum())
    # Anti-aliased edges of text and marks are a pixel wider than what crossed the threshold.
    return ndimage.binary_dilation(overlay, structure=np.ones((3, 3), bool))
