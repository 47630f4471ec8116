"""Time Explore's first views as the app serves them, from a cold start, through the app's own code.

    python -m benchmarks.app_cold_path      (from the repository root, where `app` is)

In a new $HICO_HOME with numba's disk cache empty (an app's first start on a new machine) it
writes the embedded synthetic dataset and a demo-architecture run, starts the UMAP warm-up
thread as `python app.py` does, then asks Explore for the demo run at once (the worst case: the
warm-up and the embedding share the CPU) and polls the page's tick every 0.5 s. It prints the
seconds from that request to the PCA view, to the first UMAP panel and to every panel in UMAP,
and then the same request again from a new app object (table and projections cached on disk).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="hico-app-cold-"))
os.environ["HICO_HOME"] = str(HOME)
os.environ["NUMBA_CACHE_DIR"] = str(HOME / "numba")  # before anything imports numba


def main() -> None:
    from app.default import ensure_dataset
    from app.explore import PAIRS
    from app.ui import HiCoApp, _warm_up_umap
    from hico.bench import demo_run
    from hico.data import find_clips

    data = ensure_dataset(HOME)
    run = demo_run(HOME / "runs" / "bench-demo", data, find_clips(data).classes)
    hico = HiCoApp(HOME)
    pair = next(iter(PAIRS))
    threading.Thread(target=_warm_up_umap, daemon=True).start()
    start = time.perf_counter()
    message, *_, shown, pinned = hico.show_embeddings(run.name, "", "class", pair)
    times = {"pca_view_s": time.perf_counter() - start}
    print(f"{time.perf_counter() - start:6.1f} s  {message.split(' · ')[1]}")
    while shown != "done":
        time.sleep(0.5)
        message, *_, shown, pinned = hico.explore_tick(run.name, "", "class", pair, shown, None, pinned)
        ready = int(shown.split(":")[1]) if shown.startswith("ready:") else 5
        if ready >= 1 and "first_umap_s" not in times:
            times["first_umap_s"] = time.perf_counter() - start
            print(f"{times['first_umap_s']:6.1f} s  first panel in UMAP")
    times["all_umap_s"] = time.perf_counter() - start
    print(f"{times['all_umap_s']:6.1f} s  every panel in UMAP, accuracy table filled")
    again = HiCoApp(HOME)
    start = time.perf_counter()
    *_, shown, _ = again.show_embeddings(run.name, "", "class", pair)
    times["cached_s"] = time.perf_counter() - start
    print(f"{times['cached_s']:6.2f} s  the same request, cached ({shown})")


if __name__ == "__main__":
    main()
