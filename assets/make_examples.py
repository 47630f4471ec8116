"""Write the Diagnose tab's example clips (assets/examples/) from the synthetic generator.

    python assets/make_examples.py

A lung B-lines video (mp4), a liver cine loop as an RLE-compressed multi-frame DICOM, and a
pleural-effusion still image. All synthetic; no patient data.
"""

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundMultiFrameImageStorage, generate_uid

from hico.io import write_mp4
from hico.synth import render_clip

OUT = Path(__file__).resolve().parent / "examples"


def write_cine_dicom(path: Path, frames: np.ndarray, fps: float = 15.0) -> None:
    """T x H x W uint8 -> a multi-frame MONOCHROME2 ultrasound DICOM, RLE Lossless."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.StudyDescription = "US", "SYNTHETIC^EXAMPLE", "HiCo synthetic liver cine"
    ds.Rows, ds.Columns, ds.NumberOfFrames = frames.shape[1], frames.shape[2], frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 1000.0 / fps
    ds.compress(RLELossless, frames)
    ds.save_as(path, enforce_file_format=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_mp4(OUT / "lung_b_lines.mp4", render_clip("lung_b_lines", frames=32, size=(240, 320), seed=101), fps=15)
    write_cine_dicom(OUT / "liver_f3_cine.dcm", render_clip("liver_f3", frames=24, size=(240, 320), seed=202))
    Image.fromarray(render_clip("lung_effusion", frames=1, size=(240, 320), seed=303)[0]).save(
        OUT / "lung_effusion_still.png")


if __name__ == "__main__":
    main()
