"""Start the HiCo app: python app.py [--host H] [--port P] [--share] [--auth USER:PASS ...] [--admin USER ...]
[--data-dir DIR ...] [--max-input-size PX] [--max-batch-size N] [--max-train-minutes MIN]
[--max-train-memory-gb GB] [--datasets-quota-gb GB].

Flags fall back to the environment (HICO_HOST, HICO_PORT, HICO_SHARE, HICO_AUTH, HICO_ADMINS,
HICO_MAX_UPLOAD_MB, HICO_DATA_DIRS, HICO_MAX_INPUT_SIZE, HICO_MAX_BATCH_SIZE, HICO_MAX_TRAIN_MINUTES,
HICO_MAX_TRAIN_MEMORY_GB, HICO_DATASETS_QUOTA_GB); HICO_HOME says where runs, caches and the embedded
default live.

SIGTERM or Ctrl-C (SIGINT) at any moment, even during the imports, ends the app within
STOP_WITHIN_S seconds with exit status 0 (1 if something would not stop in time), leaving no
process behind: see `Shutdown`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Callable, NoReturn

log = logging.getLogger("app")

# The parts of a stop (closing the server; ending the demo's start-up and the training child, bounded
# by app.ui.RUNS_STOP_S) run side by side; past this the process ends anyway, with status 1.
STOP_WITHIN_S = 15.0


class Shutdown:
    """The one way this process ends once it has started: a stop request runs every registered
    part (launch registers closing the server and stopping the demo's start-up and the training
    child), each bounded, side by side, then ends the process with os._exit.

    Why not the KeyboardInterrupt Python raises for Ctrl-C (and app/ui.py made of SIGTERM): it
    comes wherever the main thread happens to be. In an import or in build() it gave a traceback
    and status 1; in a finaliser Python drops it ("Exception ignored in BaseEventLoop.__del__"),
    so the app served on and then trained the demo; and when it did unwind the main thread, the
    interpreter's exit first waited for the synthetic set's whole worker pool (concurrent.futures
    joins it at exit: 16-30 s on two cores) and then finalised with daemon threads still importing
    or compiling (the issue saw a hang on the import lock, and C++ code aborting with "terminate
    called without an active exception"). So the signal handler only writes the signal's number
    to a pipe, a watcher thread reads it and stops, and the process ends with os._exit: once the
    parts have run, a finalisation has nothing left to do but wait for, or abort on, threads
    still running.
    """

    def __init__(self):
        self.requested = threading.Event()  # set once a stop begins: start-up work gives up and starts nothing
        self._lock = threading.Lock()
        self._parts: list[tuple[str, Callable[[], object]]] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def install(self) -> None:
        """Take SIGTERM and SIGINT (from the main thread, before anything slow). A SIGINT that was
        ignored when the app started (a background job of a script) stays ignored."""
        signal.signal(signal.SIGTERM, self._on_signal)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self._on_signal)
        # Python runs a handler only when the main thread next runs Python code; the wakeup fd is
        # written by the C-level handler at once, whatever the main thread is blocked in.
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="shutdown", daemon=True).start()

    def add(self, name: str, part: Callable[[], object]) -> None:
        """Run `part` when the app stops. Added after a stop began, it is not run: whatever it
        would stop was started after the request, by code that checks `requested` first."""
        with self._lock:
            self._parts.append((name, part))

    def _on_signal(self, signum, frame) -> None:
        """Again what the wakeup fd wrote (in case something replaced it): one system call, no lock,
        so safe wherever the main thread was. Later bytes are never read: one stop is enough."""
        try:
            os.write(self._write, bytes([signum]))
        except OSError:  # the pipe is full: a stop is already on its way
            pass

    def _watch(self) -> None:
        signum = os.read(self._read, 1)[0]
        self.stop(f"{signal.Signals(signum).name} received", 0)

    def stop(self, why: str, code: int) -> NoReturn:
        """Run the parts, then end the process with `code` (1 instead if a part failed or did not
        end within STOP_WITHIN_S). A second caller waits for the first to end the process."""
        with self._lock:
            first = not self.requested.is_set()
            self.requested.set()
            parts = list(self._parts)
        if not first:
            threading.Event().wait()  # forever: the first caller ends the process
        log.info("Stopping: %s.", why)
        threading.Timer(STOP_WITHIN_S + 2, self._end, (1, "the stop did not end in time")).start()
        deadline = time.monotonic() + STOP_WITHIN_S
        results: dict[str, bool] = {}
        runners = [threading.Thread(target=self._run, args=(name, part, results), name=f"stop {name}", daemon=True)
                   for name, part in parts]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        late = [name for name, _ in parts if name not in results]
        failed = [name for name, ok in results.items() if not ok]
        if late:
            log.warning("Stopping: %s did not end within %.0f s.", ", ".join(late), STOP_WITHIN_S)
        self._end(1 if late or failed else code, "stopped")

    @staticmethod
    def _run(name: str, part: Callable[[], object], results: dict) -> None:
        try:
            part()
            results[name] = True
        except Exception:
            log.exception("Stopping: %s failed", name)
            results[name] = False

    @staticmethod
    def _end(code: int, why: str) -> NoReturn:
        log.info("Exiting with status %d (%s).", code, why)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="The HiCo app: train, explore and diagnose ultrasound models.")
    parser.add_argument("--host", default=env("HICO_HOST", "127.0.0.1"), help="address to listen on")
    parser.add_argument("--port", type=int, default=int(env("HICO_PORT", "7860")), help="port to listen on")
    parser.add_argument("--share", action="store_true", default=env("HICO_SHARE", "") not in ("", "0", "false"),
                        help="also open a public Gradio share link")
    parser.add_argument("--auth", action="append", default=None, metavar="USER:PASS",
                        help="require a login; repeat for several users (HICO_AUTH: USER:PASS,USER:PASS)")
    parser.add_argument("--admin", action="append", default=None, metavar="USER",
                        help="a user (of --auth) who may stop and delete anyone's run; repeatable (HICO_ADMINS)")
    parser.add_argument("--max-upload-mb", type=float, default=float(env("HICO_MAX_UPLOAD_MB", "500")),
                        help="largest clip a user may upload, in MB")
    parser.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                        help="a folder whose datasets users may train on and explore, besides "
                             "$HICO_HOME/datasets (repeatable; HICO_DATA_DIRS lists more, separated by ':')")
    parser.add_argument("--no-demo", action="store_true", help="do not train the demo model on first start")
    caps = parser.add_argument_group("caps on what clients may ask (see README, Running it for others)")
    caps.add_argument("--max-input-size", type=int, default=_env_number("HICO_MAX_INPUT_SIZE", int), metavar="PX",
                      help="largest input size of a run")
    caps.add_argument("--max-batch-size", type=int, default=_env_number("HICO_MAX_BATCH_SIZE", int),
                      metavar="VIDEOS", help="largest batch size of a run")
    caps.add_argument("--max-train-minutes", type=float, default=_env_number("HICO_MAX_TRAIN_MINUTES"),
                      metavar="MIN", help="every run stops (with a checkpoint) after this long")
    caps.add_argument("--max-train-memory-gb", type=float, default=_env_number("HICO_MAX_TRAIN_MEMORY_GB"),
                      metavar="GB", help="largest estimated memory of a run (default: what the machine has free)")
    caps.add_argument("--datasets-quota-gb", type=float, default=_env_number("HICO_DATASETS_QUOTA_GB", float, 20.0),
                      metavar="GB", help="room for uploaded datasets in $HICO_HOME/datasets (default 20)")
    args = parser.parse_args(argv)
    args.auth = args.auth or [a for a in env("HICO_AUTH", "").split(",") if a]
    args.admin = args.admin or [a for a in env("HICO_ADMINS", "").split(",") if a]
    for login in args.auth:
        if ":" not in login or not login.split(":", 1)[0]:
            parser.error(f"--auth {login.split(':', 1)[0]}... must look like USER:PASS")
    users = [login.split(":", 1)[0] for login in args.auth]
    for admin in args.admin:
        if admin not in users:
            parser.error(f"--admin {admin} is not one of the --auth users")
    for name in ("max_input_size", "max_batch_size", "max_train_minutes", "max_train_memory_gb", "datasets_quota_gb"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    for folder in args.data_dir:
        if not os.path.isdir(os.path.expanduser(folder)):
            parser.error(f"--data-dir {folder} is not a folder")
    return args


def bound_the_heap() -> None:
    """Make glibc give back the memory the request threads free: two malloc arenas instead of up to
    eight per core, and every TRIM_EVERY_S seconds malloc_trim(0), which returns the free pages of
    every arena. In a 2-minute load test (benchmarks/load_memory.py) the app grew by 847 MB that
    Python had freed and glibc kept. (Sending large blocks to mmap instead, M_MMAP_THRESHOLD
    1 MiB, bounded it as well but made a prediction 45 % slower and embedding 40 %.) Called before
    numpy and torch load; a no-op where libc is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, 2)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def trim_now_and_then() -> None:
        while True:
            time.sleep(TRIM_EVERY_S)
            trim(0)

    threading.Thread(target=trim_now_and_then, name="malloc trim", daemon=True).start()


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
TRIM_EVERY_S = 10.0


def main(argv: list[str] | None = None) -> NoReturn:
    bound_the_heap()
    shutdown = Shutdown()
    shutdown.install()  # first: a signal during the imports below is a stop like any other
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        from app.access import data_dirs_from_env
        from app.ui import launch

        from app.limits import Caps

        auth = [tuple(login.split(":", 1)) for login in args.auth] or None
        data_dirs = [os.path.expanduser(d) for d in args.data_dir] + data_dirs_from_env()
        caps = Caps(input_size=args.max_input_size, batch_size=args.max_batch_size,
                    train_minutes=args.max_train_minutes, train_memory_gb=args.max_train_memory_gb,
                    datasets_gb=args.datasets_quota_gb)
        launch(host=args.host, port=args.port, share=args.share, auth=auth, max_upload_mb=args.max_upload_mb,
               demo=not args.no_demo, data_dirs=data_dirs, caps=caps, admins=args.admin, shutdown=shutdown)
    except Exception:  # the app could not start (its port taken): stop what it started, then say why
        if not shutdown.requested.is_set():  # else the stop (closing the server under launch) caused it
            traceback.print_exc()
        shutdown.stop("the app could not start", 1)
    shutdown.stop("the server closed", 0)  # returns only when a stop closed it: that stop ends the process


def _env_number(name: str, kind=float, default=None):
    """A number from the environment (a cap), or `default` when the variable is unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        sys.exit(f"app.py: error: {name} must be a number, got {text!r}")


if __name__ == "__main__":
    main()
