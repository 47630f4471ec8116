"""Issue 19, items 1 and 8: what a client may ask of a run (bounds, the operator's caps, memory that
must fit, a time limit), and who may stop, resume or delete it when the app has logins."""

import os
import subprocess
import sys

import pytest
import yaml
from gradio_client import Client

from app.jobs import Jobs
from app.limits import Caps
from app.owners import Owners
from hico import config, memory
from hico.data.dataset import find_clips
from hico.errors import HiCoError
from hico.runs import read_run, write_owner
from hico.train import train
from tests.app_fixtures import REPO, free_port, wait_for
from tests.conftest import write_class_dataset


def _values(data, **train):
    return {"data": {"root": str(data), "size": 32, "val_fraction": 0}, "device": "cpu",
            "train": {"batch_size": 2, "warmup_epochs": 0, "log_every": 1, **train}}


def test_a_run_over_the_memory_cap_is_refused_with_its_estimate(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    jobs = Jobs(tmp_path / "runs", caps=Caps(train_memory_gb=0.5))
    with pytest.raises(HiCoError) as refused:
        jobs.start(_values(data))
    text = str(refused.value)
    assert text.startswith("This run needs about ") and "this server allows a run 500 MB" in text
    assert "(frames under 1 MB, activations 2 MB, model 210 MB, runtime 800 MB)" in text
    assert "(2 videos a step)" in text
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing written


def test_the_probe_that_took_13_gb_is_refused_before_it_starts(tmp_path, monkeypatch):
    """The issue's probe: input size 1024 and a huge batch on a small set. The batch is bounded by
    the training videos (6 here), the frames at 1024 px by their count; the refusal names both."""
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 4e9)
    jobs = Jobs(tmp_path / "runs")
    values = _values(data, batch_size=60000)
    values["data"]["size"] = 1024
    with pytest.raises(HiCoError) as refused:
        jobs.start(values)
    need = memory.estimate(config.from_dict(values), find_clips(data), "cpu")
    assert need.batch == 6 and need.frame_count == 24
    assert need.activations == 1000 * 6 * 1024 * 1024 and need.frames == 2 * 24 * 3 * 1024 * 1024
    assert f"This run needs about {need.total / 1e9:.1f} GB" in str(refused.value)
    assert "this machine has 4.0 GB available" in str(refused.value)


def test_the_estimate_covers_what_training_takes(tmp_path):
    """Peak resident memory of a real `hico train` (two steps) against the estimate: the estimate
    is at least what the process took and not more than twice that."""
    data = write_class_dataset(tmp_path / "data", per_class=4, frames=8, size=64)
    overrides = [f"data.root={data}", "data.size=96", "train.batch_size=6", "train.max_steps=2", "device=cpu",
                 "train.val_every=0", "data.val_fraction=0.25", "train.warmup_epochs=0"]
    tiny = REPO / "configs" / "tiny.yaml"
    need = memory.estimate(config.load(tiny, overrides), find_clips(data), "cpu")
    env = dict(os.environ, HICO_HOME=str(tmp_path / "home"))
    # measured from a small parent: a child forked from this (large) test process counts the
    # parent's pages in its peak until it execs
    command = [sys.executable, "-m", "hico", "train", "--config", str(tiny), "--run-dir", str(tmp_path / "run"),
               *overrides]
    wrapper = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL); print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True, check=True)
    status, peak_kib = map(int, out.stdout.split())
    assert status == 0
    peak = peak_kib * 1024
    assert peak <= need.total <= 2 * peak, (peak / 1e6, need.describe())


def test_caps_bound_the_form_and_every_run_gets_the_time_limit(tmp_path):
    caps = Caps(input_size=64, batch_size=8, train_minutes=30)
    with pytest.raises(HiCoError, match="The input size can be at most 64 px on this server, got 96"):
        caps.check({"data": {"size": 96}, "train": {"batch_size": 4}})
    with pytest.raises(HiCoError, match="The batch size can be at most 8 videos on this server, got 9"):
        caps.check({"data": {"size": 64}, "train": {"batch_size": 9}})
    assert caps.check({"data": {"size": 64}, "train": {"batch_size": 8}})["train"]["max_minutes"] == 30.0
    assert caps.describe() == ("Limits on this server: input size up to 64 px; batch size up to 8 videos; each run "
                               "stops after 30 min (resume it for more); a run must fit the memory the machine has "
                               "free.")
    with pytest.raises(HiCoError, match="--train-minutes must be above 0"):
        Caps(train_minutes=0)


def test_a_run_stops_at_its_time_limit_with_a_checkpoint(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    cfg = config.from_dict(_values(data, epochs=1000, max_minutes=0.0001))  # 6 ms: it stops at the first look
    summary = train(cfg, tmp_path / "run", progress=False)
    info = read_run(tmp_path / "run")
    assert summary["state"] == "stopped" and summary["step"] < summary["total_steps"]
    assert summary["stopped_by"] == "its time limit of 0.0001 min (train.max_minutes)"
    assert info.state == "stopped" and info.resumable and info.stopped_by == summary["stopped_by"]


def test_owners_decide_who_may_change_a_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    write_owner(run, "alice")
    owners = Owners(("alice", "bob", "root"), frozenset({"root"}))
    owners.check(run, "alice", "stop")
    owners.check(run, "root", "delete")
    with pytest.raises(HiCoError, match="^Run r was started by alice; only alice or an admin may stop it.$"):
        owners.check(run, "bob", "stop")
    ownerless = tmp_path / "demo"
    ownerless.mkdir()
    with pytest.raises(HiCoError, match="^Run demo was not started by a user; only an admin may delete it.$"):
        owners.check(ownerless, "bob", "delete")
    Owners(("alice", "bob")).check(ownerless, "bob", "delete")  # no admins: anyone's
    Owners().check(run, None, "delete")  # no logins: as before
    with pytest.raises(HiCoError, match="Admin carol is not one of the --auth users"):
        Owners(("alice",), frozenset({"carol"}))


def test_with_logins_only_the_owner_or_an_admin_stops_or_deletes_a_run(tmp_path, monkeypatch):
    from app.ui import launch

    monkeypatch.setenv("HICO_HOME", str(tmp_path / "home"))
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    port = free_port()
    blocks, hico_app = launch(port=port, demo=False, prevent_thread_lock=True, home=tmp_path / "home",
                              data_dirs=[tmp_path / "data"], auth=[("alice", "a"), ("bob", "b"), ("root", "r")],
                              admins=("root",), caps=Caps(input_size=64, train_minutes=30))
    try:
        url = f"http://127.0.0.1:{port}/"
        alice, bob, root = (Client(url, auth=login, verbose=False) for login in
                            (("alice", "a"), ("bob", "b"), ("root", "r")))
        too_big = bob.predict(dataset=str(data), size=96, api_name="/start_training")
        assert too_big == {"ok": False, "message": "The input size can be at most 64 px on this server, got 96.",
                           "run": None}
        started = alice.predict(dataset=str(data), size=32, batch_size=2, epochs=2000, device="cpu",
                                api_name="/start_training")
        assert started["ok"], started
        name = started["run"]
        run_dir = tmp_path / "home" / "runs" / name
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_minutes"] == 30.0
        status = bob.predict(api_name="/training_status")
        assert status["run"]["owner"] == "alice" and {"run": name, "owner": "alice"}.items() <= status["runs"][0].items()
        wait_for(lambda: read_run(run_dir).step >= 1, timeout=120)
        refused = bob.predict(api_name="/stop_training")
        assert refused == {"ok": False, "message": f"Run {name} was started by alice; only alice or an admin may "
                                                   f"stop it."}
        assert bob.predict(run=name, api_name="/delete_run")["message"] == (
            f"Run {name} was started by alice; only alice or an admin may delete it.")
        assert read_run(run_dir).state == "running"
        stopped = root.predict(api_name="/stop_training")
        assert stopped["ok"] and stopped["message"].startswith(f"Stopped {name} at step")
        assert alice.predict(run=name, api_name="/delete_run") == {"ok": True, "message": f"Deleted run {name}."}
    finally:
        hico_app.jobs.shutdown()
        blocks.close()


def test_the_app_reads_logins_admins_and_caps_from_flags_and_the_environment(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_main", REPO / "app.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    args = main.parse_args(["--auth", "alice:a", "--auth", "bob:b:c", "--admin", "alice", "--max-input-size", "160",
                            "--max-train-minutes", "90"])
    assert args.auth == ["alice:a", "bob:b:c"] and args.admin == ["alice"]
    assert (args.max_input_size, args.max_train_minutes, args.datasets_quota_gb) == (160, 90.0, 20.0)
    monkeypatch.setenv("HICO_AUTH", "carol:x,dave:y")
    monkeypatch.setenv("HICO_ADMINS", "dave")
    monkeypatch.setenv("HICO_DATASETS_QUOTA_GB", "5")
    args = main.parse_args([])
    assert args.auth == ["carol:x", "dave:y"] and args.admin == ["dave"] and args.datasets_quota_gb == 5.0
    for argv, said in ((["--auth", "alice"], "--auth alice... must look like USER:PASS"),
                       (["--auth", "alice:a", "--admin", "eve"], "--admin eve is not one of the --auth users"),
                       (["--max-batch-size", "0"], "--max-batch-size must be above 0")):
        with pytest.raises(SystemExit):
            main.parse_args(argv)
        assert said in capsys.readouterr().err


def test_the_time_cap_reaches_a_config_without_a_train_section():
    asked = {"data": {"size": 64}}
    checked = Caps(train_minutes=5).check(asked)
    assert checked["train"] == {"max_minutes": 5.0} and asked == {"data": {"size": 64}}  # the request is left as it was


def test_a_huge_value_is_not_echoed_back_whole(tmp_path):
    from app.access import Access
    from app.train_tab import TrainForm, form_values

    data = write_class_dataset(tmp_path / "data", per_class=1, frames=2)
    access = Access(tmp_path / "home", data_dirs=[data])
    with pytest.raises(HiCoError) as bad_size:
        form_values(access, TrainForm(str(data), size="9" * 1_000_000 + "x"))
    with pytest.raises(HiCoError) as bad_mode:
        config.from_dict(form_values(access, TrainForm(str(data), mode="m" * 5_000_000)))
    assert len(str(bad_size.value)) < 120 and str(bad_size.value).startswith("The input size must be a whole number")
    assert len(str(bad_mode.value)) < 200 and str(bad_mode.value).startswith("Config key loss.mode must be one of")
