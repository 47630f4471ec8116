"""A launched app over a tiny trained run, shared by the API and browser tests."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import write_class_dataset


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright cannot download browsers here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_app(module_tmp):
    """(url, home, dataset, hico_app): an app on a free port with one trained run named `tiny`."""
    import os

    from hico import config
    from hico.train import train

    base = module_tmp("app")
    home = base / "home"
    old_home = os.environ.get("HICO_HOME")
    os.environ["HICO_HOME"] = str(home)
    data = write_class_dataset(base / "data", per_class=4, frames=6, size=48)
    cfg = config.load(None, [f"data.root={data}", "data.size=32", "train.batch_size=4", "train.max_steps=2",
                             "train.warmup_epochs=0", "device=cpu", "data.val_fraction=0.25"])
    train(cfg, home / "runs" / "tiny", progress=False)
    from app.ui import launch

    port = free_port()
    blocks, hico_app = launch(port=port, demo=False, prevent_thread_lock=True, home=home, max_upload_mb=5,
                              data_dirs=[base / "data"])
    url = f"http://127.0.0.1:{port}/"
    yield url, home, data, hico_app
    hico_app.jobs.shutdown()
    blocks.close()
    if old_home is None:
        os.environ.pop("HICO_HOME", None)
    else:
        os.environ["HICO_HOME"] = old_home


def wait_for(predicate, timeout: float = 60.0, every: float = 0.5):
    """Poll until predicate() is truthy; returns its value or fails the test on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"condition not met within {timeout} s")


REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
