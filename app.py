"""Start the HiCo app: python app.py [--host H] [--port P] [--share] [--auth USER:PASS ...] [--admin USER ...]
[--data-dir DIR ...] [--max-input-size PX] [--max-batch-size N] [--max-train-minutes MIN]
[--max-train-memory-gb GB] [--datasets-quota-gb GB].

Flags fall back to the environment (HICO_HOST, HICO_PORT, HICO_SHARE, HICO_AUTH, HICO_ADMINS,
HICO_MAX_UPLOAD_MB, HICO_DATA_DIRS, HICO_MAX_INPUT_SIZE, HICO_MAX_BATCH_SIZE, HICO_MAX_TRAIN_MINUTES,
HICO_MAX_TRAIN_MEMORY_GB, HICO_DATASETS_QUOTA_GB); HICO_HOME says where runs, caches and the embedded
default live.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    from app.access import data_dirs_from_env
    from app.ui import launch

    from app.limits import Caps

    auth = [tuple(login.split(":", 1)) for login in args.auth] or None
    data_dirs = [os.path.expanduser(d) for d in args.data_dir] + data_dirs_from_env()
    caps = Caps(input_size=args.max_input_size, batch_size=args.max_batch_size, train_minutes=args.max_train_minutes,
                train_memory_gb=args.max_train_memory_gb, datasets_gb=args.datasets_quota_gb)
    launch(host=args.host, port=args.port, share=args.share, auth=auth, max_upload_mb=args.max_upload_mb,
           demo=not args.no_demo, data_dirs=data_dirs, caps=caps, admins=args.admin)


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
