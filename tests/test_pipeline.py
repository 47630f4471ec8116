"""Embed, evaluate and predict from a trained run, through the functions and the CLI."""

import json

import numpy as np
import pytest

from hico.__main__ import main
from hico.embed import VECTOR_COLUMNS, embed_dataset, level_matrix, project
from hico.evaluate import evaluate_embeddings, per_class
from hico.io import write_mp4
from hico.predict import predict_clip
from hico.train import train
from tests.conftest import moving_square_clip, tiny_run_config


@pytest.fixture(scope="module")
def trained(module_tmp):
    """A 2-step run on a 2-class dataset (bright vs dark clips), shared by the tests below."""
    base = module_tmp("pipeline")
    data, cfg = tiny_run_config(base)
    train(cfg, base / "run", progress=False)
    return base / "run", data


def test_embed_table_has_every_frame_and_level(trained):
    run, data = trained
    table, path = embed_dataset(run, data, progress=False)
    assert path.is_file() and path.suffix == ".parquet"
    assert len(table) == 10 * 5 and table["video_id"].nunique() == 10
    assert sorted(table["frame"].unique()) == [0, 1, 2, 3, 4]
    assert set(table["label"]) == {"bright", "dark"}
    assert set(table["split"]) <= {"train", "val"} and (table["split"] == "val").any()
    dims = {c: level_matrix(table, c).shape[1] for c in VECTOR_COLUMNS}
    assert dims == {"backbone": 512, "local": 256, "medium": 256, "global": 256,
                    "z_local": 256, "z_medium": 256, "z_global": 256}
    assert np.isfinite(level_matrix(table, "local")).all()
    again, same_path = embed_dataset(run, data, progress=False)  # cached: read, not recomputed
    assert same_path == path and np.array_equal(level_matrix(again, "global"), level_matrix(table, "global"))
    xy = project(level_matrix(table, "global"), "pca")
    assert xy.shape == (50, 2) and xy[:, 0].var() >= xy[:, 1].var()


def test_eval_separates_bright_from_dark_by_video(trained):
    run, data = trained
    table, _ = embed_dataset(run, data, progress=False)
    results = evaluate_embeddings(table, folds=5, k=3)
    assert list(results["feature"]) == ["local", "medium", "global", "backbone", "concat"]
    assert (results["folds"] == 5).all() and (results["videos"] == 10).all()
    for col in ("linear_acc", "knn_acc", "linear_video_acc", "knn_video_acc"):
        assert results[col].between(0, 1).all()
    # brightness differs by a factor of two between classes: any level separates them
    assert results.set_index("feature").loc["backbone", "linear_acc"] >= 0.9
    assert results.set_index("feature").loc["concat", "dim"] == 768
    # per class: each test fold holds one video of each class, so the classes' mean is the accuracy
    classes = per_class(results)
    assert list(classes.index) == ["bright", "dark"] and list(classes.columns) == list(results["feature"])
    np.testing.assert_allclose(classes.mean(axis=0).to_numpy(), results["linear_acc"].to_numpy(), atol=1e-12)
    assert per_class(results[[c for c in results.columns if not c.startswith("class:")]]) is None  # older results


def test_an_interrupted_evaluation_resumes_and_a_finished_one_is_reused(trained, tmp_path):
    from hico.evaluate import evaluate_table, results_path

    run, data = trained
    table, table_path = embed_dataset(run, data, progress=False)
    partial = tmp_path / "partial.jsonl"
    full = evaluate_embeddings(table, folds=2, features=("local",), partial=partial)
    lines = partial.read_text().splitlines()
    assert len(lines) == 2  # one line per fit
    # a cut-short evaluation: fold 0 done (with scores that mark it), fold 1 not, a torn last line
    fold0 = next(json.loads(line) for line in lines if json.loads(line)["fold"] == 0)
    marked = dict(fold0, scores={key: 0.0 for key in fold0["scores"]})
    stale = dict(fold0, rows=1)  # another table's line is ignored
    partial.write_text(json.dumps(stale) + "\n" + json.dumps(marked) + "\n" + '{"folds": 2, "fe')
    resumed = evaluate_embeddings(table, folds=2, features=("local",), partial=partial)
    # fold 0 was taken from the file (its marked 0) and fold 1 fitted again
    expected = full["linear_acc"].iloc[0] - fold0["scores"]["linear"] / 2
    assert resumed["linear_acc"].iloc[0] == pytest.approx(expected, abs=1e-12)
    # evaluate_table keeps the results beside the table and reuses them until the table changes
    target = results_path(table_path)
    target.unlink(missing_ok=True)
    done, path = evaluate_table(table, table_path, folds=5, k=10, seed=0)
    assert path == target and path.name.endswith(".eval.csv") and not path.with_suffix(".partial.jsonl").exists()
    target.write_text(target.read_text().replace("local", "LOCAL", 1))
    assert evaluate_table(table, table_path)[0]["feature"].iloc[0] == "LOCAL"  # read, not recomputed
    assert results_path(table_path, folds=3).name.endswith(".eval-f3-k10-s0.csv")


def test_predict_gives_per_frame_probabilities(trained, tmp_path):
    run, _ = trained
    clip = write_mp4(tmp_path / "new.mp4", moving_square_clip(7, 40), fps=10)
    pred = predict_clip(run, clip, device="cpu")
    assert pred.frame_probs.shape == (7, 2) and pred.classes == ["bright", "dark"]
    np.testing.assert_allclose(pred.frame_probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(pred.clip_probs, pred.frame_probs.mean(axis=0))
    table = pred.frame_table()
    assert list(table.columns) == ["frame", "prediction", "bright", "dark"]
    assert predict_clip(run, clip, device="cpu", max_frames=3).frame_probs.shape == (3, 2)


def test_cli_end_to_end(trained, tmp_path, capsys):
    run, data = trained
    assert main(["embed", str(run), str(data), "--out", str(tmp_path / "e.parquet"), "--device", "cpu"]) == 0
    assert "50 frames of 10 clips" in capsys.readouterr().out
    assert main(["eval", str(run), str(data), "--folds", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "linear_acc" in out and "concat" in out
    clip = data / "bright" / "bright_0.mp4"
    assert main(["predict", str(run), str(clip), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "prediction:" in out
    saved = json.loads((tmp_path / "pred" / "clip.json").read_text())
    assert sum(saved["probabilities"].values()) == pytest.approx(1.0)
    assert main(["predict", str(run), str(clip), "--saliency", "--level", "global", "--out", str(tmp_path / "sal"),
                 "--device", "cpu"]) == 0
    from hico.io import read_clip

    video = read_clip(tmp_path / "sal" / "saliency_global.mp4")
    assert video.shape[0] == 5 and video.shape[-1] == 3  # every frame, in colour
    assert (tmp_path / "sal" / "mask.png").is_file()


def test_cli_train_and_resume(class_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", "configs/tiny.yaml", "--run-dir", str(run), f"data.root={class_dataset}",
            "data.size=32", "train.batch_size=4", "train.epochs=1", "device=cpu"]
    assert main(args) == 0
    assert "finished at step 1/1" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    assert "finished at step 2/2" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["train", "--config", "configs/tiny.yaml", "data.root=/no/such/folder"], "Dataset /no/such/folder does not exist."),
    (["train", "--config", "configs/tiny.yaml", "train.bogus=1"], "Unknown config key train.bogus"),
    (["train", "--config", "/no/config.yaml"], "Config file /no/config.yaml does not exist."),
    (["train"], "train needs --config"),
    (["predict", "/no/run", "/no/clip.mp4"], "Run folder /no/run does not exist."),
    (["embed", "/no/run", "."], "Run folder /no/run does not exist."),
])
def test_cli_user_errors_are_one_sentence(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_cli_empty_folder_and_corrupt_clip(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--config", "configs/tiny.yaml", f"data.root={tmp_path / 'empty'}"]) == 2
    assert "holds no clips" in capsys.readouterr().err
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    (bad / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    assert main(["train", "--config", "configs/tiny.yaml", f"data.root={tmp_path / 'bad'}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "Traceback" not in err


def test_predict_reads_dicom_cine_and_still_images(trained, tmp_path):
    from PIL import Image

    from hico.io import write_dicom_cine

    run, _ = trained
    frames = moving_square_clip(4, 24)
    write_dicom_cine(tmp_path / "cine.dcm", frames, rle=False)
    assert predict_clip(run, tmp_path / "cine.dcm", device="cpu").frame_probs.shape == (4, 2)
    Image.fromarray(frames[0]).save(tmp_path / "still.png")
    assert predict_clip(run, tmp_path / "still.png", device="cpu").frame_probs.shape == (1, 2)
    with pytest.raises(Exception, match="Clip /no/clip.mp4 does not exist"):
        predict_clip(run, "/no/clip.mp4", device="cpu")
    (tmp_path / "notes.txt").write_text("not a clip")
    with pytest.raises(Exception, match="notes.txt is not a video, DICOM, image or frame folder"):
        predict_clip(run, tmp_path / "notes.txt", device="cpu")


def test_embeddings_of_an_earlier_step_are_replaced(tmp_path):
    from hico.embed import _drop_stale, default_output

    (tmp_path / "embeddings").mkdir()
    old = default_output(tmp_path, tmp_path / "synth", "best", 40, 0)
    new = default_output(tmp_path, tmp_path / "synth", "best", 80, 0)
    other = default_output(tmp_path, tmp_path / "other", "best", 40, 0)
    for path in (old, old.with_suffix(".umap.npz"), other, new.with_suffix(".eval.csv")):
        path.touch()
    _drop_stale(new)
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == sorted([other.name, new.stem + ".eval.csv"])


def test_a_clip_over_the_length_limit_is_refused(trained, tmp_path):
    from hico.inference import load_run

    run, data = trained
    loaded = load_run(run, "last")
    loaded.cfg.data.max_clip_frames = 4
    clip = data / "bright" / "bright_0.mp4"
    with pytest.raises(Exception, match=r"has 5 frames, more than data.max_clip_frames \(4\)"):
        predict_clip(loaded, clip)
    assert predict_clip(loaded, clip, max_frames=4).frame_probs.shape == (4, 2)
