"""The command line: python -m hico {synth, train, finetune, embed, eval, compare, label-efficiency, predict,
export, bench} ...

Each command is a thin call into the package; a user error prints one sentence and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from hico.config import VIEWS
from hico.errors import HiCoError
from hico.paths import hico_home

log = logging.getLogger("hico")


def cmd_synth(args) -> None:
    from hico.synth import write_dataset

    out = write_dataset(args.out_dir, clips=args.clips, frames=args.frames, size=args.size, seed=args.seed)
    print(f"synthetic dataset in {out}")


EXIT_STOPPED = 3  # `hico train` stopped before its last step (Stop, SIGTERM, SIGINT): checkpointed, resumable


def cmd_train(args) -> int:
    """Exit 0 for a finished run, EXIT_STOPPED for one stopped before its last step (it saved a
    checkpoint first; --resume continues it), so scripts and schedulers can tell them apart."""
    from hico import config as config_mod
    from hico.train import train

    if args.resume:
        run_dir = Path(args.resume).expanduser()
        if args.config:
            raise HiCoError("Give either --config or --resume: a resumed run keeps the config in its folder.")
        cfg = config_mod.load(run_dir / "config.yaml", args.overrides)
    else:
        if not args.config:
            raise HiCoError("train needs --config FILE (for example configs/tiny.yaml) or --resume RUN_DIR.")
        cfg = config_mod.load(args.config, args.overrides)
        name = f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.run_dir).expanduser() if args.run_dir else hico_home() / "runs" / name
    from hico.distributed import world_from_env

    main_rank = world_from_env().main  # under torchrun only rank 0 speaks
    if main_rank:
        print(f"run folder: {run_dir}", file=sys.stderr)
    summary = train(cfg, run_dir, resume=bool(args.resume))
    return report_training(summary, run_dir, main_rank)


def report_training(summary: dict, run_dir: Path, main_rank: bool = True) -> int:
    """Print a finished or stopped run's summary; the exit code (0, or EXIT_STOPPED)."""
    code = EXIT_STOPPED if summary["state"] == "stopped" else 0
    if not main_rank:
        return code
    final = summary["final"]
    print(f"{summary['state']} at step {summary['step']}/{summary['total_steps']} "
          f"(epoch {summary['epochs']:.2f}) in {summary['elapsed_s']:.1f} s, "
          f"{summary['images_per_s']:.1f} images/s; loss {final.get('total', float('nan')):.4f}")
    if summary.get("best_val_acc") is not None:
        print(f"best held-out accuracy {summary['best_val_acc']:.3f} at step {summary['best_step']}")
    elif summary["best_step"] is not None:
        print(f"best held-out contrastive loss {summary['best_val_contrastive']:.4f} at step {summary['best_step']}")
    if summary.get("stopped_early_at") is not None:
        print(f"stopped early at step {summary['stopped_early_at']} (train.patience)")
    print(f"run folder: {run_dir}")
    if code:
        print(f"hico: stopped before step {summary['total_steps']}; continue it with --resume {run_dir} "
              f"(python -m hico train --resume {run_dir})", file=sys.stderr)
    return code


def cmd_finetune(args) -> int:
    from hico.finetune import default_run_dir, finetune
    from hico.runs import Run

    source = Run(args.run)
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else default_run_dir(source, args.head)
    summary = finetune(source, run_dir, args.data, head=args.head, overrides=args.overrides,
                       checkpoint=args.checkpoint)
    return report_training(summary, run_dir)


def cmd_embed(args) -> None:
    from hico.embed import embed_dataset

    table, path = embed_dataset(args.run_dir, args.data_dir, out=args.out, checkpoint=args.checkpoint,
                                device=args.device, reuse=not args.out)
    print(f"{len(table)} frames of {table['video_id'].nunique()} clips -> {path}")


def cmd_eval(args) -> None:
    import pandas as pd

    from hico import calibration
    from hico.evaluate import CLASS_PREFIX, calibration_on_data, evaluate_run, per_class
    from hico.inference import load_run

    results, path = evaluate_run(args.run_dir, args.data_dir, folds=args.folds, k=args.k, seed=args.seed,
                                 device=args.device, reuse=not args.recompute)
    classes = per_class(results)
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(results[[c for c in results.columns if not c.startswith(CLASS_PREFIX)]].to_string(index=False))
        if classes is not None:
            print("\nLinear probe per class (share of each class's test frames it gets right):")
            print(classes.to_string())
    loaded = load_run(args.run_dir, "auto", "cpu")
    fitted = loaded.calibration
    if fitted is not None:
        print(f"\nCalibration (fitted when the run finished, on {fitted.videos} held-out videos, {fitted.frames} "
              f"frames): temperature {fitted.temperature:.3f}, expected calibration error {fitted.ece_before:.3f} "
              f"-> {fitted.ece_after:.3f} (out of fold)")
    elif loaded.classes:
        print(f"\nCalibration: none stored for checkpoint {loaded.checkpoint} (a run fits it when it finishes "
              f"with labelled held-out videos; see {calibration.FILE})")
    on_data = calibration_on_data(loaded, args.data_dir, args.device)
    if on_data is not None:
        print(f"Calibration on {args.data_dir} ({on_data['frames']} frames): expected calibration error "
              f"{on_data['ece_before']:.3f} at temperature 1 -> {on_data['ece_after']:.3f} at "
              f"{on_data['temperature']:.3f}")
    print(f"results -> {path}")


def cmd_compare(args) -> None:
    import pandas as pd

    from hico import config as config_mod
    from hico.compare import Plan, compare, parse_modes

    cfg = config_mod.load(args.config, args.overrides)
    name = args.name or Path(args.config).stem
    seeds = tuple(range(args.seeds)) if args.seeds > 0 else ()
    if not seeds:
        raise HiCoError(f"--seeds must be 1 or more, got {args.seeds}.")
    out = Path(args.out).expanduser() if args.out else hico_home() / "compare" / name
    runs_dir = Path(args.runs_dir).expanduser() if args.runs_dir else hico_home() / "runs"
    plan = Plan(name, cfg, parse_modes(args.modes), seeds, runs_dir, out, folds=args.folds,
                eval_root=args.eval_data or "")
    summary = compare(plan)
    view = summary[["mode", "feature", "linear_acc_mean", "linear_acc_std", "knn_acc_mean", "knn_acc_std"]]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(view.to_string(index=False))
    print(f"tables and plot -> {out}")


def cmd_label_efficiency(args) -> None:
    from hico import config as config_mod
    from hico.label_efficiency import Study, parse_modes, parse_shares, run_study, share_tag

    cfg = config_mod.load(args.config, args.overrides)
    name = args.name or f"{Path(args.config).stem}-labels"
    if args.seeds < 1:
        raise HiCoError(f"--seeds must be 1 or more, got {args.seeds}.")
    study = Study(name, cfg, args.eval_data, parse_modes(args.modes), parse_shares(args.shares),
                  tuple(range(args.seeds)),
                  Path(args.runs_dir).expanduser() if args.runs_dir else hico_home() / "runs",
                  Path(args.out).expanduser() if args.out else hico_home() / "compare" / name, args.finetune_steps)
    summary = run_study(study)
    for protocol, part in summary.groupby("protocol", sort=False):
        print(f"{protocol}:")
        for row in part.itertuples():
            print(f"  {row.mode:<11} {share_tag(row.share):>4} % ({row.labelled_videos} videos)  "
                  f"{row.acc_mean:.3f} ± {row.acc_std:.3f}  {row.feature}")
    print(f"tables and plots -> {study.out_dir}")


def cmd_export(args) -> None:
    from hico.export import export_run

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    written = export_run(args.run_dir, args.out, formats, args.checkpoint)
    for kind, path in written.items():
        print(f"{kind}: {path}")


def cmd_predict(args) -> None:
    import numpy as np
    import pandas as pd

    from hico.inference import load_run
    from hico.predict import predict_clip, saliency_video

    loaded = load_run(args.run_dir, "auto", args.device)
    pred = predict_clip(loaded, args.clip, max_frames=args.max_frames, mask_screen=False if args.no_mask else None)
    if pred.unfamiliar:  # said first: the classes below do not apply to this clip
        print(f"UNFAMILIAR: {pred.familiarity.sentence()}\n  why: {pred.familiarity.reason()}")
    table = pred.frame_table()
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160,
                           "display.max_rows", 40):
        print(table.to_string(index=False) if len(table) <= 40 else table)
    calibrated = f" (calibrated, temperature {pred.temperature:.2f})" if pred.calibrated else " (not calibrated)"
    print("clip: " + "  ".join(f"{c} {p:.3f}" for c, p in zip(pred.classes, pred.clip_probs)) + calibrated)
    print(f"prediction: {pred.label}" + (" (does not apply: the clip is unfamiliar)" if pred.unfamiliar else ""))
    if pred.mask is not None:
        print(f"screen mask: {pred.mask.describe()}")
    if pred.familiarity is not None and not pred.unfamiliar:
        print(pred.familiarity.sentence())
    elif pred.familiarity_note:
        print(pred.familiarity_note)
    if args.saliency and not args.out:
        args.out = str(Path(args.run_dir) / "predictions" / Path(args.clip).stem)
    if args.out:
        out = Path(args.out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "frames.csv", index=False)
        clip = {"clip": str(pred.path), "prediction": pred.label,
                "probabilities": dict(zip(pred.classes, map(float, pred.clip_probs))),
                "calibrated": pred.calibrated, "temperature": pred.temperature,
                "unfamiliar": getattr(pred.familiarity, "unfamiliar", None),
                "unfamiliar_score": getattr(pred.familiarity, "score", None),
                "unfamiliar_reason": pred.familiarity.reason() if pred.unfamiliar else None}
        (out / "clip.json").write_text(json.dumps(clip, indent=2))
        if args.saliency:
            from PIL import Image

            from hico.saliency import write_overlay_video

            video = saliency_video(pred, loaded.model, args.level)
            write_overlay_video(out / f"saliency_{args.level}.mp4", video)
            if pred.mask is not None:
                Image.fromarray(pred.mask.tissue.astype(np.uint8) * 255).save(out / "mask.png")
        print(f"results -> {out}")


def cmd_bench(args) -> None:
    from hico.bench import Setting, run_bench, table

    settings = ([Setting.parse(text, args.compile, not args.eager) for text in args.settings.split(",")]
                if args.settings else None)
    if settings is None and args.compile != "none":
        raise HiCoError("--compile needs --settings: compiling takes a minute or more per setting.")
    report = run_bench(cpu=args.cpu, out=args.out, warmup=args.warmup, steps=args.steps, settings=settings,
                       data_dir=Path(args.data).expanduser() if args.data else None,
                       app_paths=False if args.no_app_paths else None, profile=args.profile,
                       cuda_graph=not args.eager)
    print(table(report))
    print(f"report -> {report['path']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hico", description="HiCo: hierarchical contrastive "
                                     "pretraining of ultrasound video models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a labelled synthetic ultrasound dataset of mp4 clips")
    p.add_argument("out_dir")
    p.add_argument("--clips", type=int, default=200, help="number of clips (spread over the classes)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="pretrain HiCo and write a run folder")
    p.add_argument("--config", help="YAML config (configs/tiny.yaml, demo.yaml, paper.yaml)")
    p.add_argument("--run-dir", help="where the run goes (default $HICO_HOME/runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=8")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="train a classifier for a labelled dataset from a pretrained run "
                       "(linear head on frozen features, or the whole network); the result is a run like any other")
    p.add_argument("run", help="the pretrained run folder")
    p.add_argument("data", help="labelled dataset folder or CSV manifest (may be the run's own dataset)")
    p.add_argument("--head", default="full", choices=("full", "linear"),
                   help="full: the whole network, the backbone at a tenth of the learning rate; "
                   "linear: one linear layer on frozen features")
    p.add_argument("--checkpoint", default="auto", choices=("auto", "best", "last"), help="which of its checkpoints")
    p.add_argument("--run-dir", help="where the fine-tuned run goes (default $HICO_HOME/runs/<run>-ft-<head>-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. data.label_fraction=0.1 train.max_steps=600")
    p.set_defaults(func=cmd_finetune)

    for name, help_text, func in (("embed", "write per-frame embeddings of every level to Parquet", cmd_embed),
                                  ("eval", "linear-probe and kNN accuracy per level, split by video", cmd_eval)):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run_dir")
        p.add_argument("data_dir")
        p.add_argument("--device", default="auto")
        if name == "embed":
            p.add_argument("--out", help="Parquet file (default: in RUN_DIR/embeddings)")
            p.add_argument("--checkpoint", default="auto", choices=("auto", "best", "last"))
        else:
            p.add_argument("--folds", type=int, default=5, help="video-level folds (at most)")
            p.add_argument("--k", type=int, default=10, help="neighbours for kNN")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--recompute", action="store_true", help="evaluate again even if results are saved")
        p.set_defaults(func=func)

    p = sub.add_parser("compare", help="train hico, peer, simclr, supervised and an untrained baseline at "
                       "equal steps and seeds; evaluate every level; write a table and a plot")
    p.add_argument("--config", required=True, help="YAML config every mode shares (e.g. configs/demo.yaml)")
    p.add_argument("--modes", default="untrained,hico,peer,simclr,supervised",
                   help="comma-separated: untrained, hico, peer, simclr, supervised")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every mode")
    p.add_argument("--name", help="names the runs (NAME-<mode>-s<seed>) and the tables' folder (default: config name)")
    p.add_argument("--out", help="folder for the tables and the plot (default $HICO_HOME/compare/NAME)")
    p.add_argument("--runs-dir", help="where the runs go (default $HICO_HOME/runs, where the app lists them)")
    p.add_argument("--folds", type=int, default=5, help="video-level folds of the evaluation")
    p.add_argument("--eval-data", help="evaluate on this dataset (clips the runs never saw; default: data.root)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=150")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("label-efficiency", help="accuracy on unseen clips against the share of labelled videos "
                       "(linear probe and fine-tuned) for HiCo with and without labels, its baselines and "
                       "supervised from scratch; convergence from the same runs")
    p.add_argument("--config", required=True, help="YAML pretraining config every mode shares (e.g. configs/demo.yaml)")
    p.add_argument("--eval-data", required=True, help="labelled clips of the same classes that no run trains on")
    p.add_argument("--modes", default="untrained,hico,simclr,peer,hico-sup,supervised",
                   help="comma-separated: untrained, hico (no labels), simclr, peer, hico-sup (its soft-label "
                   "term on the labelled share), supervised (from scratch on the labelled share)")
    p.add_argument("--shares", default="0.01,0.1,1", help="labelled shares of each class's training videos "
                   "(at least one video per class)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--finetune-steps", type=int, default=200, help="steps of each fine-tune")
    p.add_argument("--name", help="names the runs and the tables' folder (default: <config>-labels)")
    p.add_argument("--out", help="folder for the tables and plots (default $HICO_HOME/compare/NAME)")
    p.add_argument("--runs-dir", help="where the runs go (default $HICO_HOME/runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=200")
    p.set_defaults(func=cmd_label_efficiency)

    p = sub.add_parser("predict", help="per-frame and clip-level class probabilities for a clip")
    p.add_argument("run_dir")
    p.add_argument("clip", help="video file, DICOM file, image or frame folder")
    p.add_argument("--out", help="folder for frames.csv and clip.json")
    p.add_argument("--max-frames", type=int, default=None, help="evenly spaced frames to keep from a long clip")
    p.add_argument("--saliency", action="store_true", help="write a Grad-CAM overlay video (and the screen mask)")
    p.add_argument("--level", default="all", choices=("all", *VIEWS),
                   help="saliency level; all = local, medium and global side by side")
    p.add_argument("--no-mask", action="store_true", help="do not mask screen text and the border")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="the run's model as ONNX (checked with onnxruntime) and a ResNet state dict, "
                       "with a MODEL_CARD.md")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx,state_dict", help="comma-separated: onnx, state_dict")
    p.add_argument("--out", help="folder for the files (default RUN_DIR/export)")
    p.add_argument("--checkpoint", default="auto", choices=("auto", "best", "last"))
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="time training: model-only and end-to-end images/s, memory, MFU")
    p.add_argument("--cpu", action="store_true", help="time on the CPU (small settings) even with a GPU")
    p.add_argument("--out", help="JSON report (default $HICO_HOME/bench/bench-<time>.json)")
    p.add_argument("--data", help="dataset folder (default: synthetic clips at 480 x 640, written once)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--steps", type=int, default=None, help="timed steps (the median is reported)")
    p.add_argument("--settings", help="comma-separated heads:batch[:size] to time instead of the defaults, "
                   "e.g. pooled:32,flatten:128:224")
    p.add_argument("--compile", default="none", choices=("none", "default", "reduce-overhead", "max-autotune"),
                   help="time the --settings with torch.compile in this mode (GPU only)")
    p.add_argument("--eager", action="store_true", help="on a GPU, time the eager step rather than the step "
                   "captured as a CUDA graph (train.cuda_graph=false)")
    p.add_argument("--no-app-paths", action="store_true", help="with --cpu: skip timing the app's CPU paths")
    p.add_argument("--profile", action="store_true", help="also profile each setting's step: host enqueue time, "
                   "device kernel time, copies and the top kernels per step")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills RUN DATA and the overrides in one go: key=value words after an option
    # (`finetune RUN DATA --head linear key=value`) come back unparsed and are overrides too.
    if extra and getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        code = args.func(args)
    except HiCoError as exc:
        print(f"hico {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before a command could stop cleanly on its own
        print(f"hico {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


def cli() -> None:
    """The `hico` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
