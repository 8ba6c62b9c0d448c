"""The showtell web UI: upload a photo, get captions and where the model looked.

    python app.py                                  # http://127.0.0.1:7860, the bundled model
    python app.py --host 0.0.0.0 --port 8080       # or SHOWTELL_HOST / SHOWTELL_PORT
    python app.py --checkpoint runs/mine/best.pt   # serve another model

Call it from Python with gradio_client (the page's "Use via API" shows the same):

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    best, table, details = client.predict(handle_file("photo.jpg"), api_name="/caption")
    best, table, details = client.predict(handle_file("photo.jpg"), beam_size=5, num_captions=3,
                                          api_name="/caption")
    details["confidence"]["sure"]   # False: "not sure"
"""
import os

# Offline: no analytics or telemetry (must be set before gradio is imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from showtell.defaults import ENCODER_RUNTIMES  # noqa: E402 (imports nothing: --help stays fast)


def _env(*names: str, default: str) -> str:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the showtell captioner as a web page and API.")
    p.add_argument("--host", default=_env("SHOWTELL_HOST", "GRADIO_SERVER_NAME", default="127.0.0.1"),
                   help="address to listen on (env SHOWTELL_HOST or GRADIO_SERVER_NAME; default 127.0.0.1; "
                        "0.0.0.0 serves the local network)")
    p.add_argument("--port", type=int, default=int(_env("SHOWTELL_PORT", "GRADIO_SERVER_PORT", default="7860")),
                   help="port (env SHOWTELL_PORT or GRADIO_SERVER_PORT; default 7860)")
    p.add_argument("--checkpoint", default=os.environ.get("SHOWTELL_CHECKPOINT") or None,
                   help="model checkpoint to serve (default: the bundled model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--max-file-size", default=os.environ.get("SHOWTELL_MAX_FILE_SIZE", "10mb"),
                   help="largest upload accepted, e.g. 10mb or 500kb (default 10mb)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="caption requests served at once (env SHOWTELL_CONCURRENCY; default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per request (env SHOWTELL_THREADS; default: CPU cores / concurrency)")
    p.add_argument("--encoder-runtime", default=os.environ.get("SHOWTELL_ENCODER_RUNTIME", "auto"),
                   choices=ENCODER_RUNTIMES,
                   help="what runs the encoder (env SHOWTELL_ENCODER_RUNTIME; default auto: ONNX Runtime "
                        "on a CPU where installed, else PyTorch)")
    p.add_argument("--mirror-average", action="store_true",
                   default=os.environ.get("SHOWTELL_MIRROR_AVERAGE", "") not in ("", "0"),
                   help="caption from each photo's features averaged with its mirror image's (env "
                        "SHOWTELL_MIRROR_AVERAGE=1; README: Mirror averaging)")
    return p.parse_args(argv)


def _stop(signum, frame):
    """SIGTERM (a service manager, `kill`) stops the server as Ctrl-C does, so
    Gradio's shutdown runs and deletes the uploads and overlays it holds."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from showtell.captioner import Captioner
    from showtell.webapp import (DEFAULT_CONCURRENCY, build_demo, cap_log_lines, launch, threads_per_request,
                                 warm_up)

    concurrency = args.concurrency or int(os.environ.get("SHOWTELL_CONCURRENCY") or DEFAULT_CONCURRENCY)
    threads = args.threads or int(os.environ.get("SHOWTELL_THREADS") or threads_per_request(concurrency))
    torch.set_num_threads(threads)  # process-wide: every request's worker thread uses this many
    captioner = Captioner(args.checkpoint, device=args.device, runtime=args.encoder_runtime,
                          mirror_average=args.mirror_average)  # loaded once, shared by all requests
    warm_up(captioner)
    print(f"showtell: model {captioner.checkpoint} on {captioner.device} ready in "
          f"{time.perf_counter() - t0:.1f}s ({concurrency} requests at once, {threads} thread(s) each, "
          f"encoder in {captioner.runtime}); serving on http://{args.host}:{args.port}/", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    cap_log_lines()  # no request, however large, writes more than one short line per line to the log
    launch(build_demo(captioner, concurrency=concurrency), host=args.host, port=args.port,
           max_file_size=args.max_file_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
