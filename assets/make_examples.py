"""Write the Diagnose tab's example clips (assets/examples/) from the synthetic generator.

    python assets/make_examples.py

A lung B-lines video (mp4), a liver cine loop as an RLE-compressed multi-frame DICOM, and a
pleural-effusion still image. All synthetic; no patient data.
"""

from pathlib import Path

from PIL import Image

from hico.io import write_dicom_cine, write_mp4
from hico.synth import render_clip

OUT = Path(__file__).resolve().parent / "examples"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_mp4(OUT / "lung_b_lines.mp4", render_clip("lung_b_lines", frames=32, size=(240, 320), seed=101), fps=15)
    write_dicom_cine(OUT / "liver_f3_cine.dcm", render_clip("liver_f3", frames=24, size=(240, 320), seed=202),
                     description="HiCo synthetic liver cine")
    Image.fromarray(render_clip("lung_effusion", frames=1, size=(240, 320), seed=303)[0]).save(
        OUT / "lung_effusion_still.png")


if __name__ == "__main__":
    main()
