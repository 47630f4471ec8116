"""The benchmark: both timings, their ratio, FLOPs, the JSON report and the table."""

import json

from hico.bench import Setting, run_bench, table


def test_bench_times_model_only_and_end_to_end(class_dataset, tmp_path):
    out = tmp_path / "bench.json"
    report = run_bench(cpu=True, out=out, warmup=1, steps=2, data_dir=class_dataset, app_paths=False,
                       settings=[Setting("pooled", 4, 32), Setting("flatten", 4, 32)])
    saved = json.loads(out.read_text())
    assert [r["heads"] for r in saved["results"]] == ["pooled", "flatten"]
    for r in saved["results"]:
        assert r["batch"] == 4 and r["size"] == 32
        assert r["model_only_images_per_s"] > 0 and r["end_to_end_images_per_s"] > 0
        ratio = r["model_only_images_per_s"] and r["end_to_end_images_per_s"] / r["model_only_images_per_s"]
        assert abs(r["end_to_end_over_model_only"] - ratio) < 1e-9
        assert r["step_flops"] > 1e8  # a ResNet-18 FPN forward + backward on 8 images of 32 px
        assert r["mfu"] is None and r["peak_memory_gb"] is None  # CPU: no known peak, no device memory
    flatten, pooled = saved["results"][1]["step_flops"], saved["results"][0]["step_flops"]
    assert flatten > pooled  # the flattened heads' first layer is wider
    assert "cpu_paths" not in saved  # app_paths=False
    text = table(report)
    assert "pooled heads, batch 4, 32 px" in text and "model img/s" in text


def test_profile_says_where_a_step_goes(class_dataset, tmp_path):
    """--profile: host and wall time per step, copies, and the top operations (host time on a CPU,
    where there is no device time), in the report and its table."""
    report = run_bench(cpu=True, out=tmp_path / "bench.json", warmup=1, steps=2, data_dir=class_dataset,
                       app_paths=False, settings=[Setting("pooled", 4, 32)], profile=True)
    profiles = json.loads((tmp_path / "bench.json").read_text())["results"][0]["profile"]
    assert set(profiles) == {"model-only", "end-to-end"}
    for p in profiles.values():
        assert 0 < p["host_ms"] <= p["wall_ms"] * 1.5 and p["device_ms"] is None and p["steps"] == 2
        assert p["copies"] > 0 and 0 < len(p["top"]) <= 10
        assert all(t["ms"] > 0 and t["calls"] > 0 for t in p["top"])
        assert [t["ms"] for t in p["top"]] == sorted((t["ms"] for t in p["top"]), reverse=True)
        assert any(t["name"].startswith(("aten::convolution", "aten::mkldnn", "aten::conv", "aten::_convolution",
                                         "aten::thnn", "aten::native_batch_norm", "aten::addmm", "aten::mm"))
                   for t in p["top"])
    text = table(report)
    assert "Where a step's time goes" in text and "model-only" in text and "(top by host time (no device))" in text


def test_step_profile_refuses_no_steps():
    import pytest
    import torch

    from hico.step_profile import profile_step

    with pytest.raises(ValueError, match="steps must be at least 1"):
        profile_step(lambda: None, torch.device("cpu"), steps=0)


def test_cpu_paths_time_predict_embed_and_umap(tmp_path):
    from hico.bench import bench_cpu_paths, table

    paths = bench_cpu_paths(tmp_path, data={"clips": 8, "frames": 4, "size": 32},
                            clips=({"frames": 6, "size": (40, 56)},))
    assert paths["input_size"] == 96 and paths["frames"] == 32 and paths["clips"] == 8
    (predict,) = paths["predict_saliency"]
    assert predict["frames"] == 6 and predict["size"] == [40, 56] and predict["seconds"] > 0
    assert (tmp_path / "prediction0" / "clip.json").is_file()  # the CLI really ran, with saliency
    assert list((tmp_path / "prediction0").glob("*.mp4"))
    for key in ("embed_cold_s", "pca_s", "umap_first_s", "cached_first_view_s"):
        assert paths[key] > 0, key
    assert abs(paths["cold_first_view_s"] - (paths["embed_cold_s"] + paths["pca_s"] + paths["umap_first_s"])) < 1e-9
    assert paths["cached_first_view_s"] < paths["cold_first_view_s"]
    assert isinstance(paths["umap_compiled_from_scratch"], bool)
    assert list((tmp_path / "run" / "embeddings").glob("*.umap.npz"))
    text = table({"device": "CPU", "torch": "x", "timed_steps": 1, "results": [], "cpu_paths": paths})
    assert "hico predict --saliency, 6-frame 40x56 clip" in text and "first UMAP view of 32 frames, cold" in text
