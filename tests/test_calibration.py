"""Calibrated probabilities: the temperature fit, expected calibration error, a finished run's
calibration in summary.json, and one owner of a run's preprocessing (data.mask_screen)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hico import calibration
from hico.calibration import calibrate, expected_calibration_error, fit_temperature, softmax


def overconfident(n: int, k: int, rng, scale: float = 6.0):
    """Logits whose argmax is right 60% of the time but whose softmax says ~99%."""
    labels = rng.integers(0, k, n)
    guess = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), guess] += scale
    return logits, labels


def test_ece_matches_its_definition():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # bins of width 1/15: 0.9 and 0.8 and 0.7 and 0.55 each alone; |acc - conf| weighted by 1/4
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_the_temperature_minimises_the_held_out_likelihood_and_lowers_ece():
    rng = np.random.default_rng(0)
    logits, labels = overconfident(2000, 4, rng)
    t = fit_temperature(logits, labels)
    nll = lambda temp: -np.log(softmax(logits, temp)[np.arange(len(labels)), labels]).mean()  # noqa: E731
    assert t > 1.5  # over-confident logits are softened
    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1), nll(1.0))
    fitted = calibrate(logits, labels, np.arange(2000) // 20, "best", 40)
    assert fitted.temperature == pytest.approx(t) and fitted.videos == 100 and fitted.frames == 2000
    assert fitted.ece_before > 0.25 and fitted.ece_after < fitted.ece_before / 3
    assert np.array_equal(softmax(logits, t).argmax(1), logits.argmax(1))  # the ranking is kept


def test_calibration_is_read_only_for_its_own_checkpoint(tmp_path):
    fitted = calibration.Calibration(1.7, 0.2, 0.05, 10, 100, "best", 40)
    calibration.write(tmp_path, fitted)
    assert calibration.read(tmp_path, "best", 40) == fitted
    assert calibration.read(tmp_path, "best", 41) is None and calibration.read(tmp_path, "last", 40) is None
    assert calibration.read(tmp_path / "none", "best", 40) is None


def test_a_finished_run_calibrates_and_predict_uses_it(class_dataset, tmp_path):
    from hico import config
    from hico.inference import load_run
    from hico.predict import predict_clip
    from hico.train import train

    cfg = config.load(None, [f"data.root={class_dataset}", "data.size=32", "train.batch_size=4", "train.max_steps=4",
                             "train.warmup_epochs=0", "loss.sup_weight=1.0", "device=cpu"])
    run = tmp_path / "run"
    summary = train(cfg, run, progress=False)
    fields = summary["calibration"]
    assert fields == json.loads((run / "summary.json").read_text())["calibration"]
    assert set(fields) >= {"temperature", "ece_before", "ece_after", "videos"} and fields["videos"] >= 1
    assert 0 <= fields["ece_after"] <= 1 and calibration.T_RANGE[0] <= fields["temperature"] <= calibration.T_RANGE[1]
    loaded = load_run(run, "auto", "cpu")
    assert loaded.calibration.temperature == pytest.approx(fields["temperature"])
    clip = next(p for p in class_dataset.rglob("*") if p.is_file() and p.suffix != ".csv")
    pred = predict_clip(loaded, clip, familiarity=False)
    assert pred.temperature == pytest.approx(fields["temperature"]) and pred.calibrated
    raw = predict_clip(loaded, clip, familiarity=False)
    assert np.allclose(raw.frame_probs.sum(axis=1), 1.0)


def test_a_run_trained_without_screen_masking_is_predicted_and_embedded_without_it(class_dataset, tmp_path, monkeypatch):
    """data.mask_screen=false: predict and embed read that from the run (one owner) and never mask;
    a run from before the key existed (its sidecar has none) is taken as unmasked too."""
    import hico.screen
    from hico import config
    from hico.checkpoint import read_sidecar
    from hico.embed import embed_dataset
    from hico.inference import load_run
    from hico.predict import predict_clip
    from hico.train import train

    cfg = config.load(None, [f"data.root={class_dataset}", "data.size=32", "train.batch_size=4", "train.max_steps=1",
                             "train.val_every=0", "train.warmup_epochs=0", "data.mask_screen=false", "device=cpu"])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    monkeypatch.setattr(hico.screen, "detect_screen", lambda *a, **k: pytest.fail("the frames were masked"))
    loaded = load_run(run, "auto", "cpu")
    assert loaded.cfg.data.mask_screen is False
    clip = next(p for p in class_dataset.rglob("*") if p.is_file() and p.suffix != ".csv")
    pred = predict_clip(loaded, clip, familiarity=False)
    assert pred.mask is None
    embed_dataset(run, class_dataset, progress=False, reuse=False)
    # a legacy sidecar without the key: unmasked, not today's default (true)
    sidecar = read_sidecar(run / "checkpoints", "last")
    del sidecar["config"]["data"]["mask_screen"]
    assert config.run_config(sidecar["config"]).data.mask_screen is False
    assert config.from_dict({}).data.mask_screen is True


def test_an_unfamiliar_clip_is_said_first_with_greyed_bars_in_the_app_and_the_cli(class_dataset, tmp_path, capsys):
    """Item 2: the page's message opens with the plain sentence, the bars are greyed, and
    `hico predict` prints it before the table; a familiar clip reads as before."""
    from app.diagnose import summary
    from app.figures import probability_bars
    from hico.familiarity import Familiarity
    from hico.predict import Prediction

    probs = np.array([[0.7, 0.3]])
    pred = Prediction(tmp_path / "x.png", ["a", "b"], probs, probs[0], np.zeros((1, 1, 8, 8), np.uint8),
                      familiarity=Familiarity(4.2, True, {"mahalanobis": 5.0, "neighbours": 1.1, "early": 6.0, "middle": 1.0},
                                              "12 clips of 2 classes: a, b"), temperature=1.5)
    text = summary(pred)
    assert text.startswith("⚠️ **This model was trained on 12 clips of 2 classes: a, b; this clip is unlike them, "
                           "so its classes do not apply")
    assert "Why: familiarity score 4.20" in text and "image statistics" in text
    assert "would have said a (70%, calibrated)" in text
    bars = probability_bars(pred.classes, pred.clip_probs, greyed=True)
    assert set(bars.data[0].marker.color) == {"#c7c7c7"} and "does not apply" in bars.layout.title.text
    familiar = Prediction(pred.path, pred.classes, probs, probs[0], pred.frames,
                          familiarity=Familiarity(0.8, False, {}, ""))
    assert summary(familiar).startswith("**a** (70%, not calibrated") and "like the model's training data" in summary(familiar)

    from hico import familiarity as fam_module
    from hico.__main__ import main
    from hico.config import load
    from hico.train import train

    cfg = load(None, [f"data.root={class_dataset}", "data.size=32", "train.batch_size=4", "train.max_steps=2",
                      "train.warmup_epochs=0", "device=cpu"])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    clip = next(p for p in class_dataset.rglob("*") if p.is_file() and p.suffix != ".csv")
    never = fam_module.Reference.judge
    try:
        fam_module.Reference.judge = lambda self, f: Familiarity(9.0, True, {"mahalanobis": 9.0}, "12 clips")
        capsys.readouterr()
        assert main(["predict", str(run), str(clip), "--device", "cpu"]) == 0
    finally:
        fam_module.Reference.judge = never
    out = capsys.readouterr().out
    assert out.startswith("UNFAMILIAR: This model was trained on 12 clips; this clip is unlike them")
    assert "(does not apply: the clip is unfamiliar)" in out and "screen mask:" in out
