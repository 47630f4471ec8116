"""How well Diagnose's familiarity guard separates clips like a run's training data from clips unlike it.

    python -m benchmarks.ood [--run RUN_DIR] [--unseen DATA_DIR] [--json OUT]

In-distribution: unseen synthetic clips (another seed of the generator, written to a temporary
folder unless --unseen names one) and the three example clips. Out of distribution: the cases of
benchmarks/ood_cases.py (real scanner files from pydicom's test data in every format the README
lists, other modalities, photographs, and edits of synthetic clips). Every clip goes through
Diagnose's own path (LoadedRun.prepare, the model, hico.familiarity's stored reference).

Prints AUROC of the combined score and of each of its parts alone (unseen clips against all
out-of-distribution cases), the share flagged at hico.familiarity.LIMIT per kind, and every case
on the wrong side. --run defaults to $HICO_HOME/runs/demo.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def judge_all(loaded, reference, clips: list[tuple[str, str, np.ndarray]]) -> list[dict]:
    """[{name, kind, score, parts, unfamiliar}] for (name, kind, T x H x W x C uint8) clips."""
    import torch

    from hico.inference import embed_frames

    rows = []
    for name, kind, clip in clips:
        frames, _ = loaded.prepare(clip)
        verdict = reference.judge(embed_frames(loaded.model, torch.from_numpy(frames), loaded.device))
        rows.append({"name": name, "kind": kind, "score": verdict.score, "parts": verdict.parts,
                     "unfamiliar": verdict.unfamiliar})
    return rows


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.ood_cases import cases
    from hico import familiarity
    from hico.inference import load_run
    from hico.io import read_clip
    from hico.paths import hico_home
    from hico.synth import write_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(hico_home() / "runs" / "demo"))
    parser.add_argument("--unseen", help="in-distribution clips the run never saw (default: 200 synthetic clips, seed 1)")
    parser.add_argument("--json", help="write every case's score here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hico-ood-"))
    unseen_dir = Path(args.unseen) if args.unseen else write_dataset(work / "unseen", clips=200, seed=1, progress=False)
    loaded = load_run(args.run, "auto", "cpu")
    reference = familiarity.run_reference(loaded)
    unseen_paths = sorted(p for p in unseen_dir.rglob("*") if p.suffix in (".mp4", ".dcm", ".png"))
    unseen_clips = [read_clip(p) for p in unseen_paths]
    inside = judge_all(loaded, reference, [(p.name, "unseen", c) for p, c in zip(unseen_paths, unseen_clips)])
    examples_dir = Path(__file__).resolve().parents[1] / "assets" / "examples"
    examples = judge_all(loaded, reference, [(p.name, "example", read_clip(p)) for p in sorted(examples_dir.iterdir())
                                             if p.suffix in (".mp4", ".dcm", ".png")])
    outside = judge_all(loaded, reference, [(c.name, c.kind, c.frames) for c in cases(work / "cases", unseen_clips[::50])])
    score = lambda rows, part=None: np.array([r["parts"][part] if part else r["score"] for r in rows])  # noqa: E731
    report = {"run": str(loaded.run_dir), "checkpoint": loaded.checkpoint, "step": loaded.step,
              "limit": familiarity.LIMIT, "unseen": len(inside), "out_of_distribution": len(outside),
              "auroc": auroc(score(inside), score(outside)),
              "auroc_parts": {p: auroc(score(inside, p), score(outside, p)) for p in familiarity.PARTS},
              "unseen_flagged": float(np.mean([r["unfamiliar"] for r in inside])),
              "unseen_max_score": float(score(inside).max()),
              "examples": {r["name"]: round(r["score"], 3) for r in examples},
              "flagged_by_kind": {}, "missed": [], "seconds": 0.0}
    for kind in dict.fromkeys(r["kind"] for r in outside):
        rows = [r for r in outside if r["kind"] == kind]
        report["flagged_by_kind"][kind] = [int(sum(r["unfamiliar"] for r in rows)), len(rows),
                                           round(float(min(r["score"] for r in rows)), 3)]
    report["missed"] = [(r["name"], round(r["score"], 3)) for r in outside if not r["unfamiliar"]]
    report["wrongly_flagged"] = [(r["name"], round(r["score"], 3)) for r in inside + examples if r["unfamiliar"]]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"run {report['run']} ({loaded.checkpoint}, step {loaded.step}); limit {familiarity.LIMIT}")
    print(f"AUROC, {len(inside)} unseen in-distribution clips against {len(outside)} out-of-distribution cases: "
          f"{report['auroc']:.4f} (parts alone: "
          + ", ".join(f"{p} {v:.4f}" for p, v in report["auroc_parts"].items()) + ")")
    print(f"unseen clips flagged: {report['unseen_flagged']:.1%} (highest score {report['unseen_max_score']:.2f})")
    print("examples: " + ", ".join(f"{n} {s:.2f}" for n, s in report["examples"].items()))
    print("| kind | flagged | lowest score |\n|---|---|---|")
    for kind, (hit, total, lowest) in report["flagged_by_kind"].items():
        print(f"| {kind} | {hit} / {total} | {lowest:.2f} |")
    print("missed: " + (", ".join(f"{n} ({s:.2f})" for n, s in report["missed"]) or "none"))
    print("in-distribution flagged: " + (", ".join(f"{n} ({s:.2f})" for n, s in report["wrongly_flagged"]) or "none"))
    print(f"{report['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"report": report, "cases": inside + examples + outside}, indent=1))
    return report


if __name__ == "__main__":
    main()
