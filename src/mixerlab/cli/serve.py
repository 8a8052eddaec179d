"""`mixerlab serve`: the HTTP server on uvicorn, or on Ray Serve with --ray."""

from __future__ import annotations

import argparse

from .common import positive_int


def add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a checkpoint from_pretrained reads, or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch: PyTorch eager; onnx: ONNX Runtime on an exported .onnx file")
    p.add_argument("--max-batch", type=positive_int, default=32, help="images per model call at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    p.add_argument("--max-queue", type=positive_int, default=256, help="images waiting at most; more get 503")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="request body limit (413 beyond)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="a request waits this long at most (504)")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (a local Ray unless RAY_ADDRESS is set)")
    p.add_argument("--replicas", type=positive_int, default=2, help="with --ray: how many copies of the model")


def run_serve(args: argparse.Namespace) -> int:
    from ..serve import Limits, create_app

    limits = Limits(max_body_mb=args.max_body_mb, timeout_s=args.timeout_s, max_queue=args.max_queue,
                    max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    if args.ray:
        from ..serve.ray import serve_on_ray

        serve_on_ray(args.src, args.backend, limits, args.replicas, args.host, args.port)
        return 0
    import signal

    import uvicorn

    app = create_app(args.src, args.backend, limits)
    # On SIGTERM uvicorn stops accepting, lets the requests in flight finish and runs the app's shutdown
    # (the batcher drains). Then it restores the handler it found and raises the signal again: with this
    # no-op handler in place, a graceful SIGTERM ends the process with status 0, as a service manager
    # expects.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=int(args.timeout_s))
    return 0
