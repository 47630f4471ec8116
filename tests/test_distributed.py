"""Two CPU processes (gloo) with batch B each compute the loss and gradients of one process with
batch 2B: the contrastive negatives are gathered across ranks with gradients flowing back."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hico.distributed import World, gather_outputs
from hico.losses import HiCoLoss, probe_loss
from hico.model import HiCoModel


def _model() -> HiCoModel:
    torch.manual_seed(0)
    # eval mode: BatchNorm uses its running statistics, so per-rank batches normalise alike
    return HiCoModel(input_size=32, num_classes=2).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 1, 32, 32, generator=g), torch.randn(4, 1, 32, 32, generator=g), torch.tensor([0, 1, -1, 1])


def _loss(model, x1, x2, labels, world):
    out = model(torch.cat([x1, x2]))  # one forward per backward, as DDP needs and the trainer does
    n = x1.shape[0]
    out1 = gather_outputs({k: v[:n] for k, v in out.items()}, world)
    out2 = gather_outputs({k: v[n:] for k, v in out.items()}, world)
    total, _ = HiCoLoss()(out1, out2, labels)
    return total + probe_loss(out1, out2, labels)  # the trainer's objective: every parameter takes part


def _rank(rank: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    world = World(rank, 2, rank)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    x1, x2, labels = _inputs()
    part = slice(2 * rank, 2 * rank + 2)
    total = _loss(model, x1[part], x2[part], labels, world)
    total.backward()
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None}
        torch.save({"loss": total.detach(), "grads": grads}, result_file)
    dist.destroy_process_group()


def test_two_ranks_match_one_process_at_twice_the_batch(tmp_path):
    x1, x2, labels = _inputs()
    model = _model()
    single = _loss(model, x1, x2, labels, World())
    single.backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path / "result.pt")), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert abs(result["loss"].item() - single.item()) < 1e-5
    assert result["grads"].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torchrun_trains_with_two_cpu_ranks_and_rank_zero_writes(class_dataset, tmp_path):
    import json
    import subprocess
    import sys

    from hico.inference import load_run

    run = tmp_path / "run"
    env = dict(os.environ, HICO_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hico",
           "train", "--config", "configs/tiny.yaml", "--run-dir", str(run), f"data.root={class_dataset}",
           "data.size=32", "train.batch_size=2", "train.epochs=2", "data.val_fraction=0.25", "device=cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("finished at step") == 1  # only rank 0 speaks
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["ranks"] == 2
    # 6 training videos, 2 per rank: a global batch of 4, one step per epoch
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(x["total"] > 0 for x in lines)
    loaded = load_run(run, "last")
    assert loaded.step == 2 and not any(k.startswith("module.") for k in loaded.model.state_dict())
    # resume works the same with two ranks: a third epoch continues the run from its checkpoint
    resume = [*cmd[:cmd.index("--config")], "--resume", str(run), "train.epochs=3"]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 3


def test_two_ranks_stop_early_together(class_dataset, tmp_path):
    """Only rank 0 validates, so only it runs out of patience: the other rank must stop with it
    (through the ranks' collective), not wait for it forever."""
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    env = dict(os.environ, HICO_HOME=str(tmp_path / "home"))
    # a frozen encoder at lr 1e-9: the held-out accuracy cannot improve after the first validation
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hico",
           "train", "--config", "configs/tiny.yaml", "--run-dir", str(run), f"data.root={class_dataset}",
           "data.size=32", "train.batch_size=2", "train.epochs=30", "train.log_every=1", "data.val_fraction=0.25",
           "loss.mode=supervised", "train.freeze_encoder=true", "train.lr=1e-9", "train.patience=2", "device=cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped early at step 3 (train.patience)" in done.stdout
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 3 and status["ranks"] == 2
