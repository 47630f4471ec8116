"""Load the app's API for a while and watch the server's memory: what stays after the load?

    python -m benchmarks.load_memory [--seconds 120] [--clients 4] [--home DIR] [--json [FILE]]
                                     [--idle 30] [--arena-max N] [--env KEY=VALUE]
                                     [--trim-every S] [--inspect]

From the repository root. It prepares a scratch $HICO_HOME (a new temporary folder unless --home)
with a trained run named `demo` and the synthetic dataset: copies of runs/demo and datasets/synth
of your $HICO_HOME (the app's first start trains them) when they exist (HICO_LOAD_SOURCE names
another home to copy from),
else a tiny run trained here in seconds (2 steps at 32 px on a small class dataset, as the tests'
`live_app` does). Then:

1. it starts `python app.py --no-demo --port P` as a subprocess with that HICO_HOME (with
   --arena-max N, also MALLOC_ARENA_MAX=N) and waits until it serves;
2. one warm-up request of each kind (the table for /embeddings and /find_similar embedded, the
   familiarity reference built), then waits until the server's CPU is quiet: RSS "before";
3. N client threads (each its own gradio_client.Client, i.e. its own Gradio session, and a new one
   every SESSION_EVERY requests) loop for --seconds over /predict (each example clip, levels
   "all" and "global"), /find_similar, /embeddings (pca), /timeline, /training_status, /compare,
   raw posts to /gradio_api/upload, and /training_status through Gradio's REST API
   (/gradio_api/call/..., as curl calls it: each call a new session); --only picks some of these.
   The server's RSS (VmRSS, its children's added), threads and open files are sampled every 5 s;
4. RSS right after the load and after --idle seconds of nothing.

It prints a table (RSS before / peak / after / after idle, requests and errors per endpoint) and
with --json writes it as JSON (to FILE, or to stdout without one).

--inspect runs the same app in this process instead (app.ui.launch) and the load from a child
process (`--url`), then reports what holds the memory: the app's caches (Diagnoser, Explorer,
familiarity, metrics, timeline views) with the bytes of the arrays they reach, Gradio's
per-session state, tracemalloc's largest allocations made during the load and still alive,
object counts by type, and RSS before and after gc.collect() and malloc_trim(0).
`--url URL` only drives the load against a server already running (no memory figures unless
--pid).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (REPO / "assets" / "examples").iterdir() if p.suffix != ".py")
SOURCE = Path(os.environ.get("HICO_LOAD_SOURCE") or os.environ.get("HICO_HOME") or Path.home() / ".hico")
RUN = "demo"
SAMPLE_EVERY_S = 5.0
SESSION_EVERY = 10  # requests of a client thread before it opens a new Client (a new Gradio session)
REST_PER_CYCLE = 4  # calls through Gradio's REST API (/gradio_api/call/...) in each cycle of the mix
MB = 1 << 20


# ---------------------------------------------------------------- the scratch home

def prepare_home(home: Path) -> str:
    """A run `demo` and the dataset `synth` under home; returns which (copied or trained)."""
    (home / "runs").mkdir(parents=True, exist_ok=True)
    (home / "datasets").mkdir(parents=True, exist_ok=True)
    run, data = home / "runs" / RUN, home / "datasets" / "synth"
    if run.is_dir() and (run / "checkpoints").is_dir():
        return f"existing run {run}"
    src_run, src_data = SOURCE / "runs" / RUN, SOURCE / "datasets" / "synth"
    if src_run.is_dir() and src_data.is_dir():
        shutil.copytree(src_run, run)
        if not data.exists():
            shutil.copytree(src_data, data)
        return f"copied {src_run} and {src_data}"
    # a fresh machine: a tiny run, as tests/app_fixtures.py live_app trains it
    sys.path.insert(0, str(REPO))
    os.environ["HICO_HOME"] = str(home)
    from hico import config
    from hico.train import train
    from tests.conftest import write_class_dataset

    write_class_dataset(data, per_class=4, frames=6, size=48)
    cfg = config.load(None, [f"data.root={data}", "data.size=32", "train.batch_size=4", "train.max_steps=2",
                             "train.warmup_epochs=0", "device=cpu", "data.val_fraction=0.25"])
    train(cfg, run, progress=False)
    return f"trained a tiny run (2 steps, 32 px) on {data} (no {src_run} to copy)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(url: str, proc: subprocess.Popen | None = None, timeout: float = 600.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not serve within {timeout} s")


# ---------------------------------------------------------------- the process's memory

def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> dict:
    """RSS of pid (and its descendants, added), its threads and open files."""
    st = _status(pid)
    rss = int(st["VmRSS"].split()[0]) * 1024
    kids = descendants(pid)
    kids_rss = 0
    for k in kids:
        try:
            kids_rss += int(_status(k)["VmRSS"].split()[0]) * 1024
        except (OSError, KeyError):
            pass
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return {"t": time.time(), "rss_mb": round(rss / MB, 1), "children": len(kids),
            "children_rss_mb": round(kids_rss / MB, 1), "total_mb": round((rss + kids_rss) / MB, 1),
            "threads": int(st["Threads"]), "fds": fds, "hwm_mb": round(int(st["VmHWM"].split()[0]) / 1024, 1)}


def wait_quiet(pid: int, busy_below: float = 0.15, for_s: float = 6.0, timeout: float = 300.0) -> float:
    """Wait until the process has used under busy_below of a core for for_s seconds (its background
    work after the warm-up, e.g. UMAP and the accuracy table, is done); returns the seconds waited."""
    start = time.monotonic()
    quiet_since = None
    last, last_t = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - start < timeout:
        time.sleep(2.0)
        now, now_t = cpu_seconds(pid), time.monotonic()
        busy = (now - last) / (now_t - last_t)
        last, last_t = now, now_t
        if busy < busy_below:
            quiet_since = quiet_since or now_t
            if now_t - quiet_since >= for_s:
                break
        else:
            quiet_since = None
    return time.monotonic() - start


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = SAMPLE_EVERY_S):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self._halt = threading.Event()

    def run(self):
        while True:
            try:
                self.samples.append(sample(self.pid))
            except OSError:
                return
            if self._halt.wait(self.every):
                return

    def stop(self):
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- the load

def mix() -> list[tuple]:
    """One cycle of requests: (endpoint, kwargs maker)."""
    from gradio_client import handle_file

    out = []
    for clip in EXAMPLES:
        for level in ("all", "global"):
            out.append(("/predict", lambda c=clip, lv=level: dict(clip=handle_file(str(c)), run=RUN, level=lv)))
    for clip in EXAMPLES:
        out.append(("/find_similar", lambda c=clip: dict(clip=handle_file(str(c)), run=RUN, dataset="", k=6)))
    for _ in range(2):
        out.append(("/embeddings", lambda: dict(run=RUN, dataset="", method="pca", wait_s=0, refresh=False)))
    out.append(("/timeline", lambda: dict(run=RUN, level="global")))
    out.append(("/timeline", lambda: dict(run=RUN, level="local")))
    for _ in range(3):
        out.append(("/training_status", lambda: {}))
    out.append(("/compare", lambda: dict(runs=RUN)))
    out.append(("upload", None))
    out.append(("upload", None))
    for _ in range(REST_PER_CYCLE):  # Gradio's REST API: no session hash, so each call is a new session
        out.append(("rest /training_status", None))
    return out


def _ok(endpoint: str, result) -> str | None:
    """None if the answer is a success, else why not."""
    if isinstance(result, dict) and result.get("ok") is False:
        return str(result.get("message"))[:200]
    return None


def rest_call(url: str, api_name: str, data: list) -> None:
    """A call through /gradio_api/call/<api_name> as curl makes it: POST, then read the event stream."""
    import httpx

    r = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=60)
    r.raise_for_status()
    event = r.json()["event_id"]
    r = httpx.get(f"{url}gradio_api/call/{api_name}/{event}", timeout=120)
    r.raise_for_status()
    if "event: complete" not in r.text:
        raise RuntimeError(f"no complete event: {r.text[:200]}")


def raw_upload(url: str, path: Path) -> None:
    import httpx

    with open(path, "rb") as f:
        r = httpx.post(url + "gradio_api/upload", files=[("files", (path.name, f))], timeout=60)
    r.raise_for_status()


class Load:
    """N client threads looping over `mix()` until `seconds` pass."""

    def __init__(self, url: str, clients: int, seconds: float, only: str = ""):
        self.url, self.clients, self.seconds = url, clients, seconds
        self.only = [name.strip() for name in only.split(",") if name.strip()]
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()
        self.failures: Counter = Counter()  # answered {"ok": false}
        self.seconds_by: defaultdict = defaultdict(float)
        self.messages: dict[str, str] = {}
        self.sessions = 0
        self.downloads = tempfile.mkdtemp(prefix="hico-load-dl-")  # what the clients download; removed after
        self._lock = threading.Lock()

    def _client(self):
        from gradio_client import Client

        client = Client(self.url, verbose=False, download_files=self.downloads)
        with self._lock:
            self.sessions += 1
        return client

    def _worker(self, index: int, end: float) -> None:
        cycle = [c for c in mix() if not self.only or c[0] in self.only]
        rng = random.Random(index)
        position = rng.randrange(len(cycle))
        client, used = None, 0
        while time.monotonic() < end:
            endpoint, make = cycle[position % len(cycle)]
            position += 1
            start = time.monotonic()
            try:
                if client is None or used >= SESSION_EVERY:
                    client, used = self._client(), 0
                used += 1
                if endpoint == "upload":
                    raw_upload(self.url, EXAMPLES[position % len(EXAMPLES)])
                    why = None
                elif endpoint.startswith("rest "):
                    rest_call(self.url, endpoint.split("/", 1)[1], [])
                    why = None
                else:
                    why = _ok(endpoint, client.predict(**make(), api_name=endpoint))
                with self._lock:
                    self.requests[endpoint] += 1
                    self.seconds_by[endpoint] += time.monotonic() - start
                    if why:
                        self.failures[endpoint] += 1
                        self.messages.setdefault(endpoint, why)
            except Exception as exc:  # counted, and the loop goes on
                with self._lock:
                    self.requests[endpoint] += 1
                    self.errors[endpoint] += 1
                    self.messages.setdefault(endpoint, f"{type(exc).__name__}: {exc}"[:300])
                client = None  # a broken session: start a new one

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self._worker, args=(i, end), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shutil.rmtree(self.downloads, ignore_errors=True)

    def report(self) -> dict:
        names = sorted(self.requests)
        return {"sessions": self.sessions,
                "endpoints": {n: {"requests": self.requests[n], "errors": self.errors[n],
                                  "not_ok": self.failures[n],
                                  "mean_s": round(self.seconds_by[n] / max(self.requests[n], 1), 3),
                                  "first_problem": self.messages.get(n)} for n in names}}


def warm_up(url: str) -> dict:
    """One request of each kind: the models loaded, the table embedded (waited for), the timeline
    views built. Returns what each answered (ok or the message)."""
    from gradio_client import Client, handle_file

    downloads = tempfile.mkdtemp(prefix="hico-load-dl-")
    client = Client(url, verbose=False, download_files=downloads)
    out = {}
    calls = [("/training_status", {}),
             ("/embeddings", dict(run=RUN, dataset="", method="pca", wait_s=300, refresh=False)),
             ("/timeline", dict(run=RUN, level="global")), ("/timeline", dict(run=RUN, level="local")),
             ("/compare", dict(runs=RUN))]
    for clip in EXAMPLES:
        calls.append(("/predict", dict(clip=handle_file(str(clip)), run=RUN, level="all")))
        calls.append(("/find_similar", dict(clip=handle_file(str(clip)), run=RUN, dataset="", k=6)))
    for clip in EXAMPLES:  # again: the familiarity reference is built in the background after the first
        calls.append(("/predict", dict(clip=handle_file(str(clip)), run=RUN, level="global")))
    for endpoint, kwargs in calls:
        start = time.monotonic()
        try:
            result = client.predict(**kwargs, api_name=endpoint)
            why = _ok(endpoint, result)
            out[endpoint] = {"ok": why is None, "message": why, "s": round(time.monotonic() - start, 1)}
        except Exception as exc:
            out[endpoint] = {"ok": False, "message": f"{type(exc).__name__}: {exc}"[:300]}
    raw_upload(url, EXAMPLES[0])
    shutil.rmtree(downloads, ignore_errors=True)
    return out


# ---------------------------------------------------------------- the subprocess run

TRIMMED_APP = """
import ctypes, runpy, sys, threading, time
libc = ctypes.CDLL("libc.so.6")
def trim():
    while True:
        time.sleep({every})
        libc.malloc_trim(0)
threading.Thread(target=trim, daemon=True, name="malloc-trim").start()
sys.argv = ["app.py", *sys.argv[1:]]
runpy.run_path("app.py", run_name="__main__")
"""

def run_subprocess(args) -> dict:
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="hico-load-"))
    prepared = prepare_home(home)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HICO_HOME=str(home), PYTHONUNBUFFERED="1")
    if args.arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.arena_max)
    for pair in args.env:
        key, _, value = pair.partition("=")
        env[key] = value
    log_path = home / "app.log"
    log = open(log_path, "w")
    command = [sys.executable, "app.py", "--no-demo", "--port", str(port)]
    if args.trim_every:  # app.py as it is, with a thread that hands freed heap back to the system
        command = [sys.executable, "-c", TRIMMED_APP.format(every=args.trim_every), *command[2:]]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"home {home}: {prepared}\napp pid {proc.pid} on {url} (log {log_path})", flush=True)
    try:
        serve_s = wait_serving(url, proc)
        started = sample(proc.pid)
        warm = warm_up(url)
        quiet_s = wait_quiet(proc.pid)
        before = sample(proc.pid)
        print(f"serving after {serve_s:.0f} s at {started['total_mb']:.0f} MB; warm ({before['total_mb']:.0f} MB) "
              f"after a quiet wait of {quiet_s:.0f} s; loading for {args.seconds:.0f} s with {args.clients} clients",
              flush=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        load = Load(url, args.clients, args.seconds, args.only)
        load.run()
        sampler.stop()
        after = sample(proc.pid)
        time.sleep(args.idle)
        idle = sample(proc.pid)
        report = {"home": str(home), "prepared": prepared, "url": url, "pid": proc.pid,
                  "malloc_arena_max": args.arena_max or None, "env": args.env, "trim_every_s": args.trim_every,
                  "only": args.only, "seconds": args.seconds, "clients": args.clients,
                  "idle_s": args.idle, "started": started, "warm_up": warm, "before": before,
                  "peak": max(sampler.samples + [after], key=lambda s: s["total_mb"]),
                  "after": after, "after_idle": idle, "samples": sampler.samples, **load.report()}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not args.home and not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    return report


# ---------------------------------------------------------------- the in-process run (--inspect)

def reachable_bytes(root, limit: int = 300_000) -> dict:
    """Bytes of the numpy arrays, torch tensors and pandas frames reachable from root (each buffer
    counted once), and the count of Python objects walked."""
    import gc

    import numpy as np

    seen, buffers = set(), set()
    arrays = tensors = frames = 0
    todo, walked = [root], 0
    while todo and walked < limit:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        walked += 1
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in buffers:
                buffers.add(id(base))
                arrays += base.nbytes
            continue
        kind = type(obj).__module__ + "." + type(obj).__name__
        if kind.startswith("torch") and hasattr(obj, "untyped_storage"):
            try:
                storage = obj.untyped_storage()
                if storage.data_ptr() not in buffers:
                    buffers.add(storage.data_ptr())
                    tensors += storage.nbytes()
            except Exception:
                pass
            continue
        if kind == "pandas.core.frame.DataFrame":
            try:
                frames += int(obj.memory_usage(deep=True).sum())
            except Exception:
                pass
            continue
        if isinstance(obj, (str, bytes, int, float, type, type(len))) or kind.startswith("threading") \
                or kind.startswith("gradio") or kind.startswith("logging"):
            continue
        todo.extend(gc.get_referents(obj))
    return {"arrays_mb": round(arrays / MB, 1), "tensors_mb": round(tensors / MB, 1),
            "frames_mb": round(frames / MB, 1), "objects_walked": walked}


def caches(hico_app, blocks) -> dict:
    """The app's caches: entries and the bytes they reach."""
    out = {}
    d = hico_app.diagnoser
    out["Diagnoser._models"] = {"entries": len(d._models), **reachable_bytes(dict(d._models))}
    out["Diagnoser._results"] = {"entries": len(d._results), **reachable_bytes(dict(d._results))}
    e = hico_app.explorer
    out["Explorer.items"] = {"entries": len(e.items), **reachable_bytes(dict(e.items))}
    out["Explorer._frames"] = {"entries": len(e._frames), **reachable_bytes(dict(e._frames))}
    references = hico_app.diagnoser.references._cache
    out["diagnoser.references"] = {"entries": len(references), **reachable_bytes(dict(references))}
    mc = hico_app.metrics
    out["metrics"] = {"entries": len(mc._entries), **reachable_bytes(dict(mc._entries))}
    tv = hico_app.timeline_views
    out["timeline_views"] = {"entries": len(tv._views), **reachable_bytes(dict(tv._views))}
    # Gradio's per-session state and its file bookkeeping
    holder = getattr(blocks, "state_holder", None)
    sessions = getattr(holder, "session_data", None) if holder is not None else None
    out["gradio.state_holder.session_data"] = {"entries": len(sessions) if sessions is not None else None}
    out["gradio.temp_file_sets"] = {"entries": sum(len(s) for s in getattr(blocks, "temp_file_sets", []))}
    q = getattr(blocks, "_queue", None)
    if q is not None:
        for name in ("event_ids_to_events", "pending_messages_per_session", "pending_event_ids_session",
                     "event_analytics", "process_completion_time", "active_jobs"):
            value = getattr(q, name, None)
            if value is not None and hasattr(value, "__len__"):
                inner = sum(len(v) for v in value.values() if hasattr(v, "__len__")) if isinstance(value, dict) \
                    else None
                out[f"gradio.queue.{name}"] = {"entries": len(value), "inner": inner}
    return out


def rss_mb() -> float:
    return round(int(_status(os.getpid())["VmRSS"].split()[0]) / 1024, 1)


def type_counts() -> Counter:
    import gc

    def name(t: type) -> str:
        module, qualname = getattr(t, "__module__", ""), getattr(t, "__qualname__", "")
        return f"{module if isinstance(module, str) else '?'}.{qualname if isinstance(qualname, str) else t.__name__}"

    return Counter(name(type(o)) for o in gc.get_objects())


def run_inspect(args) -> dict:
    import ctypes
    import gc
    import tracemalloc

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="hico-load-"))
    prepared = prepare_home(home)
    os.environ["HICO_HOME"] = str(home)
    sys.path.insert(0, str(REPO))
    import logging
    logging.basicConfig(level=logging.WARNING)
    from app.ui import launch

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    blocks, hico_app = launch(port=port, demo=False, prevent_thread_lock=True, home=home)
    print(f"home {home}: {prepared}\nin-process app on {url}", flush=True)
    pid = os.getpid()
    wait_serving(url)
    warm = warm_up(url)
    wait_quiet(pid)
    gc.collect()
    before = sample(pid)
    caches_before = caches(hico_app, blocks)
    types_before = type_counts()
    tracemalloc.start(args.frames)
    snap_before = tracemalloc.take_snapshot()
    print(f"warm at {before['rss_mb']:.0f} MB; loading for {args.seconds:.0f} s with {args.clients} clients "
          f"(child process)", flush=True)
    sampler = Sampler(pid)
    sampler.start()
    driver = subprocess.run([sys.executable, "-m", "benchmarks.load_memory", "--url", url, "--seconds",
                             str(args.seconds), "--clients", str(args.clients), "--json"], cwd=REPO,
                            capture_output=True, text=True)
    sampler.stop()
    try:
        load = json.loads(driver.stdout)
    except ValueError:
        load = {"driver_stdout": driver.stdout[-2000:], "driver_stderr": driver.stderr[-2000:]}
    after = sample(pid)
    traced_now, traced_peak = tracemalloc.get_traced_memory()
    time.sleep(args.idle)
    idle = sample(pid)
    gc.collect()
    after_gc = sample(pid)
    traced_gc, _ = tracemalloc.get_traced_memory()
    snap_gc = tracemalloc.take_snapshot()
    tracemalloc.stop()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    top = snap_gc.filter_traces(filters).compare_to(snap_before.filter_traces(filters), "traceback")
    top_lines = snap_gc.filter_traces(filters).compare_to(snap_before.filter_traces(filters), "lineno")
    types_after = type_counts()
    caches_after = caches(hico_app, blocks)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    trimmed = sample(pid)
    report = {"home": str(home), "prepared": prepared, "seconds": args.seconds, "clients": args.clients,
              "warm_up": warm, "before": before, "peak": max(sampler.samples + [after], key=lambda s: s["rss_mb"]),
              "after": after, "after_idle": idle, "after_gc": after_gc, "after_malloc_trim": trimmed,
              "tracemalloc": {"traced_after_load_mb": round(traced_now / MB, 1),
                              "traced_peak_mb": round(traced_peak / MB, 1),
                              "traced_after_idle_gc_mb": round(traced_gc / MB, 1)},
              "caches_before": caches_before, "caches_after": caches_after,
              "types_grown": [(k, types_after[k] - types_before.get(k, 0))
                              for k, _ in (types_after - types_before).most_common(25)],
              "top_lines": [{"size_mb": round(s.size_diff / MB, 2), "count": s.count_diff,
                             "where": str(s.traceback[0])} for s in top_lines[:25]],
              "top_tracebacks": [{"size_mb": round(s.size_diff / MB, 2), "count": s.count_diff,
                                  "traceback": [str(f) for f in s.traceback][-args.frames:]} for s in top[:12]],
              "load": load}
    hico_app.jobs.shutdown()
    blocks.close()
    if not args.home and not args.keep_home:
        shutil.rmtree(home, ignore_errors=True)
    return report


# ---------------------------------------------------------------- output

def table(report: dict) -> str:
    lines = []
    key = "total_mb" if "total_mb" in report.get("before", {}) else "rss_mb"
    stages = [s for s in ("started", "before", "peak", "after", "after_idle", "after_gc", "after_malloc_trim")
              if s in report]
    if stages:
        lines.append(f"{'':20s} {'RSS MB':>8s} {'threads':>8s} {'fds':>6s} {'children':>9s}")
        for s in stages:
            v = report[s]
            lines.append(f"{s:20s} {v[key]:8.0f} {v['threads']:8d} {v['fds']:6d} {v['children']:9d}")
    if "tracemalloc" in report:
        lines.append("tracemalloc: " + ", ".join(f"{k} {v}" for k, v in report["tracemalloc"].items()))
    load = report.get("load", report)
    if "endpoints" in load:
        lines.append(f"\n{'endpoint':22s} {'requests':>9s} {'errors':>7s} {'not ok':>7s} {'mean s':>7s}")
        for name, e in load["endpoints"].items():
            lines.append(f"{name:22s} {e['requests']:9d} {e['errors']:7d} {e['not_ok']:7d} {e['mean_s']:7.2f}")
        lines.append(f"sessions (Clients opened): {load['sessions']}")
        for name, e in load["endpoints"].items():
            if e["first_problem"]:
                lines.append(f"  {name}: {e['first_problem']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--home", default=None, help="the HICO_HOME to prepare and use (default: a new temp dir)")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary home")
    parser.add_argument("--idle", type=float, default=30, help="seconds of nothing before the last measure")
    parser.add_argument("--arena-max", type=int, default=0, help="MALLOC_ARENA_MAX for the app (0: unset)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="more environment for the app, e.g. MALLOC_MMAP_THRESHOLD_=1048576 (repeatable)")
    parser.add_argument("--trim-every", type=float, default=0, metavar="S",
                        help="run the app with a thread calling malloc_trim(0) every S seconds (0: none)")
    parser.add_argument("--only", default="", metavar="NAMES",
                        help="only these kinds of request, comma-separated, e.g. '/predict,rest /training_status'")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the report as JSON to FILE (stdout without one)")
    parser.add_argument("--inspect", action="store_true", help="the app in this process, inspected (see above)")
    parser.add_argument("--frames", type=int, default=12, help="tracemalloc traceback depth (--inspect)")
    parser.add_argument("--url", default=None, help="only drive the load against this running app")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, to sample")
    args = parser.parse_args(argv)
    if args.url:
        url = args.url if args.url.endswith("/") else args.url + "/"
        sampler = Sampler(args.pid) if args.pid else None
        before = sample(args.pid) if args.pid else None
        if sampler:
            sampler.start()
        load = Load(url, args.clients, args.seconds, args.only)
        load.run()
        report = {"url": url, "seconds": args.seconds, "clients": args.clients, **load.report()}
        if sampler:
            sampler.stop()
            report.update(before=before, peak=max(sampler.samples, key=lambda s: s["total_mb"]),
                          after=sample(args.pid), samples=sampler.samples)
    elif args.inspect:
        report = run_inspect(args)
    else:
        report = run_subprocess(args)
    if args.json == "-":
        print(json.dumps(report, indent=1, default=str))
        return
    print(table(report))
    if "caches_after" in report:
        print("\ncaches (entries; MB of arrays / tensors / frames reached), before -> after the load:")
        for name, after in report["caches_after"].items():
            b = report["caches_before"].get(name, {})
            mb = lambda c: f"{c.get('arrays_mb', 0) + c.get('tensors_mb', 0) + c.get('frames_mb', 0):.1f} MB" \
                if "arrays_mb" in c else ""
            print(f"  {name:40s} {b.get('entries')} -> {after.get('entries')}  {mb(b)} -> {mb(after)}")
        print("\nlargest allocations made during the load and alive after it (tracemalloc, by line):")
        for t in report["top_lines"][:15]:
            print(f"  {t['size_mb']:8.2f} MB {t['count']:8d} blocks  {t['where']}")
        print("\nobject counts grown:")
        for name, n in report["types_grown"][:15]:
            print(f"  {n:8d} {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
