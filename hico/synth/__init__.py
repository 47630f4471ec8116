"""Procedural B-mode-like ultrasound clips, labelled, with classes that differ at different scales.

No real ultrasound can be downloaded where this project runs, so first runs and tests use
these clips. Each clip is made the way a scanner makes an image:

1. Anatomy is described as echogenicity (dB), attenuation (dB/cm/MHz) and presence maps on
   a polar (depth along the beam, lateral) grid, in *layers* that move independently: the
   body wall moves with the probe; the organ below moves with breathing and slides under it
   (lung sliding); a compressed lung flaps inside an effusion.
2. Speckle is the magnitude of a complex Gaussian scatterer field convolved with an
   anisotropic point-spread function (longer laterally than axially). The field is kept in
   the Fourier domain, so moving it with its layer is an exact phase ramp, and it
   decorrelates gradually from frame to frame (``s_t = rho s_{t-1} + sqrt(1 - rho^2) n_t``).
   On the convex probe's polar grid a fixed lateral blur in angle becomes a lateral blur in
   centimetres that grows with depth, as on a real scanner.
3. Attenuation is integrated along each beam (so ribs cast shadows and fluid enhances what
   lies behind it), time-gain compensation corrects it imperfectly, a focal zone is a little
   brighter, electronic noise shows where the signal is weak, and the envelope is
   log-compressed to 8 bits.
4. The polar image is scan-converted to a convex fan (or a linear rectangle), and screen
   overlays with random content (text, frame counter, depth scale, grey bar) are burned in
   with the same style for every class.

Which scale separates the classes is in :data:`CLASS_SCALES`: the liver grades differ in
texture (local / medium), the lung patterns in the arrangement of large structures
(medium / global).
"""

from hico.synth.dataset import clip_seed, write_dataset
from hico.synth.render import CLASS_SCALES, CLASSES, MIN_SIZE, SynthSample, render_clip, render_sample

__all__ = [
    "CLASSES",
    "CLASS_SCALES",
    "MIN_SIZE",
    "SynthSample",
    "clip_seed",
    "render_clip",
    "render_sample",
    "write_dataset",
]
