"""hico export (issue 20, item 6): ONNX checked against torch with onnxruntime, the encoder as a
plain ResNet state dict, and a model card, for a tiny trained run."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from hico import export
from hico.__main__ import main
from hico.errors import HiCoError
from hico.inference import load_run
from hico.model import ResNet
from hico.train import train
from tests.conftest import tiny_run_config


@pytest.fixture(scope="module")
def run(module_tmp):
    base = module_tmp("export")
    _, cfg = tiny_run_config(base)
    train(cfg, base / "run", progress=False)
    return base / "run"


def test_the_onnx_model_computes_what_the_torch_model_does(run, tmp_path):
    written = export.export_run(run, tmp_path)
    assert set(written) == {"onnx", "state_dict", "card"} and all(p.is_file() for p in written.values())
    session = onnxruntime.InferenceSession(str(written["onnx"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probs", "local", "medium", "global", "backbone"]
    loaded = load_run(run)
    frames, source = export.check_frames(loaded, 5)  # another batch size than the export's example
    assert frames.shape == (5, 3, 32, 32) and frames.dtype == np.uint8 and "frames of" in source
    got = dict(zip(("probs", "local", "medium", "global", "backbone"), session.run(None, {"frames": frames})))
    with torch.no_grad():
        expected = loaded.model.embed(export.normalise(export.to_unit(torch.from_numpy(frames))))
    for view in ("local", "medium", "global", "backbone"):
        assert np.abs(got[view] - expected[view].numpy()).max() <= export.ONNX_TOLERANCE
    temperature = loaded.calibration.temperature if loaded.calibration else 1.0
    probs = torch.softmax(expected["logits"] / temperature, dim=-1).numpy()
    assert np.abs(got["probs"] - probs).max() <= export.ONNX_TOLERANCE and np.allclose(got["probs"].sum(1), 1, atol=1e-5)


def test_the_encoder_is_a_plain_resnet_state_dict(run, tmp_path):
    path = export.export_run(run, tmp_path, ("state_dict",))["state_dict"]
    assert path.name == "resnet18_encoder.pt"
    weights = torch.load(path)
    plain = ResNet("resnet18")
    plain.load_state_dict(weights, strict=True)  # torchvision's names: conv1, bn1, layer1..layer4
    assert "layer4.1.bn2.running_var" in weights and "layer2.0.downsample.0.weight" in weights
    trunk = load_run(run).model.trunk.state_dict()
    assert all(torch.equal(weights[k], trunk[k]) for k in trunk)


def test_the_model_card_says_what_the_model_is_and_is_not_for(run, tmp_path):
    card = export.export_run(run, tmp_path)["card"].read_text()
    assert card.startswith("# Model card: HiCo run `run`")
    assert "Classes (2): bright, dark." in card and "largest absolute difference from torch" in card
    assert "| local |" in card and "effective rank" in card  # this run logged its ranks
    assert "**Not for clinical decisions**" in card


def test_a_mismatch_or_an_unknown_format_is_one_sentence(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "ONNX_TOLERANCE", 0.0)
    with pytest.raises(HiCoError, match="The ONNX model differs from the torch model by up to .* it was not kept"):
        export.export_run(run, tmp_path, ("onnx",))
    assert not (tmp_path / "model.onnx").exists()
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert "hico export: error: Export format torchscript is not one of onnx, state_dict." in capsys.readouterr().err
    assert main(["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "resnet18_encoder.pt").is_file() and (tmp_path / "cli" / "MODEL_CARD.md").is_file()


def test_the_card_reads_the_validation_of_the_exported_checkpoint(tmp_path):
    """A `best` checkpoint at step 4 of a run that validated again at step 6 (it went on, or stopped
    early): the card's accuracy is step 4's, not the last line's."""
    from hico.export import validation_at

    lines = [{"step": s, "total": 1.0} for s in range(1, 7)]
    for line in lines:
        if line["step"] % 2 == 0:
            line["val_knn_acc_global"] = line["step"] / 10
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert validation_at(tmp_path, 4)["val_knn_acc_global"] == 0.4
    assert validation_at(tmp_path, 5)["step"] == 4 and validation_at(tmp_path, 6)["step"] == 6
    assert validation_at(tmp_path, 1) == {}
