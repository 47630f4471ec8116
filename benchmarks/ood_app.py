"""Diagnose's familiarity answer through a running app's /predict, for files as users upload them.

    python app.py --no-demo &                    # with the demo model trained in $HICO_HOME/runs/demo
    python -m benchmarks.ood_app [--url http://127.0.0.1:7860/] [--run demo] [--unseen DATA_DIR]

Uploads, through gradio_client: the ultrasound files of pydicom's test data as DICOM (JPEG 2000,
RGB, palette colour, a JPEG multi-frame cine, big endian), the cine as mp4, avi, mov, webm and mkv,
a frame as PNG and JPEG (every format the README lists); ten unseen synthetic clips (seed 1,
written to a temporary folder unless --unseen names one); and the three example clips. Prints
each file's `unfamiliar`, score and prediction, and the counts the issue asks for.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def real_files(folder: Path) -> list[Path]:
    from benchmarks.ood_cases import REAL_DICOMS, VIDEO_FORMATS, pydicom_file, write_still, write_video
    from hico.io import read_clip

    files = []
    for name in REAL_DICOMS:
        files.append(Path(shutil.copy(pydicom_file(name), folder / name)))
        clip = read_clip(pydicom_file(name))
        if len(clip) > 1:
            files += [write_video(folder / f"{Path(name).stem}.{suffix}", clip) for suffix in VIDEO_FORMATS]
    cine = read_clip(pydicom_file("examples_ybr_color.dcm"))
    files += [write_still(folder / f"cine_frame.{suffix}", cine[0]) for suffix in ("png", "jpg")]
    return files


def main(argv: list[str] | None = None) -> None:
    from gradio_client import Client, handle_file

    from hico.synth import write_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--run", default="demo")
    parser.add_argument("--unseen")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hico-ood-app-"))
    unseen_dir = Path(args.unseen) if args.unseen else write_dataset(work / "unseen", clips=16, seed=1, progress=False)
    unseen = sorted(unseen_dir.rglob("*.mp4"))[::max(1, len(list(unseen_dir.rglob("*.mp4"))) // 10)][:10]
    examples = sorted((Path(__file__).resolve().parents[1] / "assets" / "examples").glob("*.*"))
    examples = [p for p in examples if p.suffix in (".mp4", ".dcm", ".png")]
    groups = {"real": real_files(work), "unseen": unseen, "example": examples}
    client = Client(args.url, verbose=False)
    counts = {}
    print("| kind | file | unfamiliar | score | prediction |\n|---|---|---|---|---|")
    for kind, files in groups.items():
        flagged = 0
        for path in files:
            out = client.predict(clip=handle_file(str(path)), run=args.run, level="global", api_name="/predict")
            if not out.get("ok"):
                print(f"| {kind} | {path.name} | error | | {out.get('message')} |")
                continue
            flagged += bool(out["unfamiliar"])
            score = out["unfamiliar_score"]
            print(f"| {kind} | {path.name} | {out['unfamiliar']} | {score if score is None else round(score, 2)} | "
                  f"{out['prediction']} {max(out['clip_probs']):.2f} |")
        counts[kind] = (flagged, len(files))
    for kind, (flagged, total) in counts.items():
        print(f"{kind}: {flagged} of {total} unfamiliar")


if __name__ == "__main__":
    main()
