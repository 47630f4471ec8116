"""Start the HiCo app: python app.py [--host H] [--port P] [--share] [--auth USER:PASS] [--data-dir DIR ...].

Flags fall back to the environment (HICO_HOST, HICO_PORT, HICO_SHARE, HICO_AUTH,
HICO_MAX_UPLOAD_MB, HICO_DATA_DIRS); HICO_HOME says where runs, caches and the embedded default live.
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
    parser.add_argument("--auth", default=env("HICO_AUTH"), metavar="USER:PASS", help="require this login")
    parser.add_argument("--max-upload-mb", type=float, default=float(env("HICO_MAX_UPLOAD_MB", "500")),
                        help="largest clip a user may upload, in MB")
    parser.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                        help="a folder whose datasets users may train on and explore, besides "
                             "$HICO_HOME/datasets (repeatable; HICO_DATA_DIRS lists more, separated by ':')")
    parser.add_argument("--no-demo", action="store_true", help="do not train the demo model on first start")
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    for folder in args.data_dir:
        if not os.path.isdir(os.path.expanduser(folder)):
            parser.error(f"--data-dir {folder} is not a folder")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    from app.access import data_dirs_from_env
    from app.ui import launch

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    data_dirs = [os.path.expanduser(d) for d in args.data_dir] + data_dirs_from_env()
    launch(host=args.host, port=args.port, share=args.share, auth=auth, max_upload_mb=args.max_upload_mb,
           demo=not args.no_demo, data_dirs=data_dirs)


if __name__ == "__main__":
    main()
