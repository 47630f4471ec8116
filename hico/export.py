"""A run's model to take away: ONNX (checked against torch with onnxruntime), the encoder as a plain
ResNet state dict, and a MODEL_CARD.md beside them.

    python -m hico export RUN [--format onnx,state_dict] [--out DIR] [--checkpoint auto|best|last]

Files, in DIR (default RUN/export):
- model.onnx: input `frames`, uint8 N x 3 x S x S (S the run's data.size; a gray frame repeated to
  three channels; resized, and screen-masked when the run masks, as hico.inference prepares a
  clip), normalised inside the graph; outputs `probs` (N x K, softmax of the classifier, without
  the calibration temperature) when the model has classes, and the pooled views `local`,
  `medium`, `global` (N x fpn_dim) and `backbone` (N x 512), as `hico embed` computes them. The
  batch is dynamic. It is checked on a real batch (frames of the run's dataset) against the torch
  model: the largest absolute difference must be at most ONNX_TOLERANCE, else HiCoError.
- resnet18_encoder.pt (resnet50_encoder.pt): the backbone's weights under torchvision's names
  (conv1, bn1, layer1..layer4), to load into torchvision.models.resnet18() with strict=False (only
  its `fc` is missing) or any ResNet that names its layers the same way.
- MODEL_CARD.md: data, config, held-out accuracy per level with its protocol, effective rank,
  calibration, the familiarity threshold, intended use and known limits.

The ONNX export uses torch's TorchScript-based exporter (`dynamo=False`): it needs only the `onnx`
package, and checks what it wrote with onnxruntime. TorchScript itself is not offered: torch 2.13
deprecates torch.jit.trace.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hico.config import VIEWS
from hico.data import find_clips, load_clip_frames
from hico.data.augment import normalise, to_unit
from hico.errors import HiCoError
from hico.files import atomic_path, write_text
from hico.inference import LoadedRun, load_run
from hico.io import ClipLimits
from hico.paths import expand_path
from hico.runs import SUMMARY, Run, read_metrics

FORMATS = ("onnx", "state_dict")
ONNX_TOLERANCE = 1e-4
CHECK_FRAMES = 16  # frames of the run's dataset the ONNX model is checked on
CARD = "MODEL_CARD.md"


class Exported(nn.Module):
    """What model.onnx computes: uint8 frames N x 3 x S x S -> (probs, local, medium, global,
    backbone); probs are softmax(logits / temperature), the run's calibration, as hico predict gives them."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model, self.temperature = model, float(temperature)
        self.outputs = (("probs",) if model.classifier is not None else ()) + VIEWS

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.embed(normalise(to_unit(frames)))
        views = tuple(out[view] for view in VIEWS)
        return (((out["logits"] / self.temperature).softmax(dim=-1),) + views) if "logits" in out else views


def export_run(run: Run | str | Path, out: str | Path | None = None, formats=FORMATS,
               checkpoint: str = "auto") -> dict[str, Path]:
    """Write the run's model in `formats` and its MODEL_CARD.md to `out` (default RUN/export);
    returns {format or "card": path}. HiCoError for an unknown format, a run without a checkpoint,
    or an ONNX model that does not match the torch model."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise HiCoError(f"Export format {', '.join(unknown) or '(none)'} is not one of {', '.join(FORMATS)}.")
    run = Run.of(run)
    loaded = load_run(run.checkpoint(checkpoint), device="cpu")
    out = Path(out).expanduser() if out else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    written, check = {}, None
    if "state_dict" in formats:
        written["state_dict"] = _write_encoder(loaded, out)
    if "onnx" in formats:
        written["onnx"], check = _write_onnx(loaded, out)
    written["card"] = write_card(loaded, out / CARD, written, check)
    return written


def _write_encoder(loaded: LoadedRun, out: Path) -> Path:
    trunk = {name[len("trunk."):]: tensor.detach().clone().contiguous()
             for name, tensor in loaded.model.state_dict().items() if name.startswith("trunk.")}
    path = out / f"{loaded.cfg.model.backbone}_encoder.pt"
    with atomic_path(path) as tmp:
        torch.save(trunk, tmp)
    return path


def check_frames(loaded: LoadedRun, count: int = CHECK_FRAMES) -> tuple[np.ndarray, str]:
    """(uint8 N x 3 x S x S frames, where they come from): frames of the run's own dataset,
    prepared as it trained on them, spread over its first clips; random frames (said so) when the
    dataset is not on this machine."""
    data = loaded.cfg.data
    try:
        clips = find_clips(expand_path(data.root), data.frame_folders).clips if data.root else []
    except HiCoError:
        clips = []
    frames = []
    for clip in clips[:count]:
        try:
            decoded = load_clip_frames(clip.path, data.size, data.max_frames, None, ClipLimits.from_config(data),
                                       data.mask_screen)
        except HiCoError:
            continue
        frames.append(decoded[len(decoded) // 2])
        if len(frames) == count:
            break
    if frames:
        batch = np.stack(frames)
        return np.repeat(batch, 3, axis=1) if batch.shape[1] == 1 else batch, f"{len(frames)} frames of {data.root}"
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (count, 3, data.size, data.size), dtype=np.uint8),
            f"{count} random frames (the run's dataset {data.root or '(none)'} is not on this machine)")


def _write_onnx(loaded: LoadedRun, out: Path) -> tuple[Path, dict]:
    import onnxruntime

    wrapper = Exported(loaded.model, _temperature(loaded)).eval()
    frames, source = check_frames(loaded)
    example = torch.from_numpy(frames[:2])
    path = out / "model.onnx"
    started = time.perf_counter()
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the exporter's notes: it is the legacy one (chosen, see above), and the gray-input branch
        # of ResNet.forward is fixed to three channels in the graph (the input is three channels)
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, input_names=["frames"],
                          output_names=list(wrapper.outputs), dynamic_axes={"frames": {0: "batch"}},
                          opset_version=17)
    wrapper.eval()  # the exporter puts back the mode it found; the reference below is inference
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"frames": frames})
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(torch.from_numpy(frames))]
    differences = {name: float(np.abs(a - b).max()) for name, a, b in zip(wrapper.outputs, got, expected)}
    worst = max(differences.values())
    if worst > ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        raise HiCoError(f"The ONNX model differs from the torch model by up to {worst:.2g} on {source} (more than "
                        f"{ONNX_TOLERANCE:g}); it was not kept.")
    return path, {"source": source, "differences": differences, "seconds": time.perf_counter() - started}


def _temperature(loaded: LoadedRun) -> float:
    fitted = loaded.calibration
    return fitted.temperature if fitted is not None else 1.0


def validation_at(run_dir: Path, step: int) -> dict:
    """The metrics line of the checkpoint's validation: the last that holds held-out accuracy or
    effective rank at or before `step` (a `best` checkpoint is saved at a validation; a run that
    went on, or stopped early, validated again after it)."""
    rows = [row for row in read_metrics(run_dir) if any(k.startswith(("val_knn_acc_", "val_rank_")) for k in row)
            and int(row.get("step", 0)) <= step]
    return rows[-1] if rows else {}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_card(loaded: LoadedRun, path: Path, files: dict[str, Path], check: dict | None) -> Path:
    """MODEL_CARD.md for the loaded run: what it was trained on and how, what it reaches, and
    what it is for."""
    from hico.familiarity import LIMIT, read, reference_path

    cfg, run_dir = loaded.cfg, loaded.run_dir
    summary = _read_json(run_dir / SUMMARY)
    calibration = loaded.calibration
    row = validation_at(run_dir, loaded.step)
    reference = read(reference_path(run_dir, loaded.checkpoint, loaded.step))
    classes = loaded.classes
    lines = [f"# Model card: HiCo run `{run_dir.name}`", "",
             f"Checkpoint `{loaded.checkpoint}` at step {loaded.step}; exported {time.strftime('%Y-%m-%d')}.", "",
             "## Files", ""]
    if "onnx" in files:
        names = ", ".join(f"`{name}`" for name in Exported(loaded.model).outputs)
        names = names.replace("`probs`", f"`probs` (calibrated, temperature {_temperature(loaded):.3f})")
        lines += [f"- `{files['onnx'].name}`: input `frames`, uint8 N x 3 x {cfg.data.size} x {cfg.data.size} "
                  f"(resized{', screen-masked' if cfg.data.mask_screen else ''}; gray repeated to three channels); "
                  f"outputs {names}. Checked with onnxruntime on {check['source']}: largest absolute difference "
                  f"from torch {max(check['differences'].values()):.1e} (at most {ONNX_TOLERANCE:g} allowed)."]
    if "state_dict" in files:
        lines += [f"- `{files['state_dict'].name}`: the {cfg.model.backbone} backbone under torchvision's names; "
                  f"`torchvision.models.{cfg.model.backbone}().load_state_dict(torch.load(path), strict=False)` "
                  f"(its `fc` stays untrained)."]
    lines += ["", "## Data", "",
              f"- Dataset: `{cfg.data.root or '(none)'}`.",
              f"- Videos: {summary.get('train_videos', '?')} for training, {summary.get('val_videos', '?')} held out "
              f"(data.val_fraction {cfg.data.val_fraction}, split by video); labels kept for "
              f"{cfg.data.label_fraction:.0%} of the training videos.",
              f"- Classes ({len(classes)}): {', '.join(classes) if classes else 'none (label-free)'}.", "",
              "## Training", "",
              f"- {cfg.model.backbone} + FPN, {cfg.model.heads} heads on levels {', '.join(cfg.model.levels)}, "
              f"input {cfg.data.size} px.",
              f"- Loss: {cfg.loss.mode} (peer {cfg.loss.peer_weight}, cross {cfg.loss.cross_weight}, supervised "
              f"{cfg.loss.sup_weight}, temperature {cfg.loss.temperature}).",
              f"- {summary.get('step', loaded.step)} steps of batch {cfg.train.batch_size}, lr {cfg.train.lr:g}, "
              f"{cfg.train.epochs} epochs planned, seed {cfg.train.seed}.",
              *_finetune_lines(run_dir, cfg, summary), "",
              "## Held-out accuracy per level", ""]
    accuracy = [(view, row.get(f"val_knn_acc_{view}"), row.get(f"val_probe_acc_{view}"), row.get(f"val_rank_{view}"))
                for view in VIEWS]
    ranked = any(rank is not None for *_, rank in accuracy)
    if any(a is not None or r is not None for _, a, _, r in accuracy):
        lines += [f"At step {row.get('step')}: kNN (k = 10, cosine, standardised features, held-out frames "
                  "against training-video frames) and the model's own linear probe per level"
                  + ("; effective rank: participation ratio of the level's features." if ranked else "."), "",
                  "| level | kNN | linear probe |" + (" effective rank |" if ranked else ""),
                  "|---|---|---|" + ("---|" if ranked else "")]
        lines += [f"| {view} | {_figure(knn)} | {_figure(probe)} |" + (f" {_figure(rank, '.1f')} |" if ranked else "")
                  for view, knn, probe, rank in accuracy]
    else:
        lines += ["No held-out accuracy was logged (no labelled held-out videos, or no validation)."]
    lines += ["", "## Calibration and familiarity", ""]
    if calibration is not None:
        lines += [f"- Temperature {calibration.temperature:.3f} fitted on {calibration.videos} held-out videos: "
                  f"expected calibration error {calibration.ece_before:.3f} before, {calibration.ece_after:.3f} "
                  f"after. `probs` in model.onnx are divided by it, as hico predict and Diagnose give them."]
    else:
        lines += ["- No calibration was fitted for this checkpoint (the run did not finish, or had no labelled "
                  "held-out videos): `probs` are the classifier's softmax as it is."]
    if reference is not None:
        lines += [f"- Familiarity: a clip scoring above {LIMIT} (its distance from the training data over the "
                  f"reference's threshold {reference.threshold:.3g}) is unlike the training data; its classes do "
                  f"not apply (hico predict and the app's Diagnose tab say so)."]
    lines += ["", "## Intended use and limits", "",
              "- For research and teaching with ultrasound video: studying what pretraining learns, and "
              "prototyping. **Not for clinical decisions**: it is not a medical device and was not validated "
              "on patients.",
              "- Accuracy above is on held-out videos of the same dataset; on other scanners, presets and "
              "populations it can be far lower, and a confident probability is not evidence.",
              *(["- Its data are the app's synthetic set: rendered clips, not scans."]
                if Path(cfg.data.root or "").name == "synth" else []), ""]
    write_text(path, "\n".join(lines))
    return path


def _finetune_lines(run_dir: Path, cfg, summary: dict) -> list[str]:
    """What a fine-tuned run (hico.finetune) came from and how it was tuned; [] for any other run."""
    from hico.finetune import read_source

    source = read_source(run_dir)
    if source is None:
        return []
    head = ("a linear head on the frozen encoder" if cfg.train.freeze_encoder else
            f"the whole network, the backbone at {cfg.train.backbone_lr:g} of the learning rate")
    lines = [f"- Fine-tuned from run `{source.get('run')}` (checkpoint `{source.get('checkpoint')}` at step "
             f"{source.get('step')}, pretrained with loss {source.get('mode')}, labels on "
             f"{float(source.get('label_fraction', 0)):.0%} of its training videos): {head}."]
    if summary.get("best_val_acc") is not None:
        lines.append(f"- Held-out classifier accuracy {summary['best_val_acc']:.3f} at step {summary.get('best_step')}"
                     + (f"; stopped early at step {summary['stopped_early_at']} (train.patience "
                        f"{cfg.train.patience})." if summary.get("stopped_early_at") is not None else "."))
    return lines


def _figure(value, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec)
