"""The app on a GPU, driven through its own API as a client would: issue 20's last GPU check.

    python -m benchmarks.gpu_app --out OUT.json [--dataset DIR] [--size 224] [--epochs 2] [--device cuda:0]

From the repository root, in a $HICO_HOME where DIR (default: $HICO_HOME/datasets/synth) holds
labelled clips. It serves the app (`app.ui.launch`, no demo run), then through gradio_client:

1. `/start_training` on DIR at `--size` px on `--device`; `/training_status` every second until the
   run ends, keeping what it says of the GPU (`run.gpu`: name, total memory, the run's peak memory,
   utilisation) and the Train tab's progress line built from it (`app.train_tab.progress_html`);
2. `/embeddings` on the finished run: the PCA view, then the UMAP view (timed from the request);
3. `/predict` on one of DIR's clips, with its saliency video.

The JSON holds each answer's figures and seconds; every step is checked (a refusal, a failed run or
a missing GPU reading ends it with exit code 1, after writing what it has). With `--device cpu` it
runs the same checks on the CPU (a smoke test of this script; `run.gpu` is then None).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def check(args, report: dict) -> dict:
    """Run the three steps, filling `report` as they go (report["ok"] False, with "problem", where
    one failed)."""
    from gradio_client import Client, handle_file

    from app import train_tab
    from app.ui import launch
    from benchmarks.load_memory import free_port
    from hico.data import find_clips
    from hico.paths import hico_home

    home = hico_home()
    dataset = Path(args.dataset or home / "datasets" / "synth")
    report.update(device=args.device, size=args.size, dataset=str(dataset))
    port = free_port()
    blocks, _ = launch(port=port, demo=False, prevent_thread_lock=True, home=home, data_dirs=[dataset])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        started = time.perf_counter()
        reply = client.predict(dataset=str(dataset), size=args.size, batch_size=args.batch_size, epochs=args.epochs,
                               device=args.device, validations=2, api_name="/start_training")
        report["start"] = reply
        if not reply["ok"]:
            report["problem"] = f"/start_training refused: {reply['message']}"
            return report
        run, readings, status = reply["run"], [], {}
        deadline = time.time() + args.train_timeout
        while time.time() < deadline:
            status = client.predict(api_name="/training_status")
            current = status.get("run") or {}
            if current.get("name") == run and current.get("gpu"):
                readings.append({"t": round(time.perf_counter() - started, 1), "step": current["step"],
                                 **current["gpu"]})
            if current.get("name") == run and current.get("state") in ("finished", "stopped", "failed"):
                break
            time.sleep(1)
        current = status.get("run") or {}
        report["train"] = {"state": current.get("state"), "steps": current.get("step"),
                           "seconds": round(time.perf_counter() - started, 1),
                           "images_per_s": current.get("images_per_s"), "gpu_readings": readings,
                           "train_tab_progress": train_tab.progress_html(status)}
        busy = [r["util"] for r in readings if r.get("util") is not None]
        report["train"]["gpu_util_max"] = max(busy) if busy else None
        report["train"]["gpu_util_median"] = sorted(busy)[len(busy) // 2] if busy else None
        if current.get("state") == "running":
            client.predict(api_name="/stop_training")
            report["problem"] = f"the run had not finished after {args.train_timeout:.0f} s (stopped)"
            return report
        if current.get("state") != "finished":
            report["problem"] = f"the run ended {current.get('state')}: {current.get('error')}"
            return report
        if args.device != "cpu" and not readings:
            report["problem"] = "/training_status never named the GPU (run.gpu)"
            return report
        report["explore"] = {}
        for method in ("pca", "umap"):
            t0 = time.perf_counter()
            view = client.predict(run=run, dataset=str(dataset), method=method, api_name="/embeddings")
            report["explore"][method] = {"ok": view["ok"], "seconds": round(time.perf_counter() - t0, 2),
                                         "frames": view.get("frames"), "message": view.get("message", "")}
            if not view["ok"]:
                report["problem"] = f"/embeddings ({method}) refused: {view.get('message')}"
                return report
        clip = find_clips(dataset).clips[0].path
        t0 = time.perf_counter()
        answer = client.predict(clip=handle_file(str(clip)), run=run, api_name="/predict")
        probs = answer.get("clip_probs") or []
        report["diagnose"] = {"clip": str(clip.relative_to(dataset)), "seconds": round(time.perf_counter() - t0, 2),
                              "ok": answer.get("ok"), "prediction": answer.get("prediction"),
                              "probability": max(probs) if probs else None,
                              "unfamiliar": answer.get("unfamiliar"), "unfamiliar_score": answer.get("unfamiliar_score"),
                              "overlay_video": bool(answer.get("overlay_video"))}
        if not answer.get("ok") or not answer.get("overlay_video"):
            report["problem"] = f"/predict gave no prediction with an overlay: {answer.get('message')}"
            return report
        report.update(ok=True, problem=None)
        return report
    finally:
        blocks.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--train-timeout", type=float, default=240, help="seconds the run may take")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # a step limit (timeout's SIGTERM) still leaves what was measured so far in --out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    report: dict = {"ok": False, "problem": "stopped before the end (its time limit)"}
    try:
        check(args, report)
    finally:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "start"}, indent=1, default=str)[:6000])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
