"""`mixerlab serve`: the HTTP server on uvicorn, or on Ray Serve with --ray."""

from __future__ import annotations

import argparse

from .common import add_trust_compiled, positive_int


def add_serve(p: argparse.ArgumentParser) -> None:
    from ..serve.limits import Limits

    d = Limits.__dataclass_fields__
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("src", help="a checkpoint from_pretrained reads, or an exported file: .onnx (ONNX Runtime), "
                               ".xml (OpenVINO), .pt2 (with --trust-compiled)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port, 1-65535")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch: PyTorch eager on a checkpoint; onnx: ONNX Runtime on an exported .onnx file "
                        "(an exported file is always run by its own runtime)")
    add_trust_compiled(p)
    p.add_argument("--max-batch", type=positive_int, default=d["max_batch"].default, help="images per model call")
    p.add_argument("--max-wait-ms", type=float, default=d["max_wait_ms"].default,
                   help="how long a batch waits for more images")
    p.add_argument("--max-queue", type=positive_int, default=d["max_queue"].default,
                   help="images being decoded or waiting for the model; more get 503")
    p.add_argument("--max-body-mb", type=float, default=d["max_body_mb"].default, help="request body limit (413)")
    p.add_argument("--max-files", type=positive_int, default=d["max_files"].default,
                   help="files in one /v1/predict/batch request")
    p.add_argument("--timeout-s", type=float, default=d["timeout_s"].default,
                   help="a request's decoding, queueing and model time at most (504)")
    p.add_argument("--read-timeout-s", type=float, default=d["read_timeout_s"].default,
                   help="the whole body must arrive within this (408)")
    p.add_argument("--header-timeout-s", type=float, default=d["header_timeout_s"].default,
                   help="a connection's request headers must arrive within this, or it is closed")
    p.add_argument("--keep-alive-s", type=float, default=d["keep_alive_s"].default,
                   help="an idle keep-alive connection is closed after this")
    p.add_argument("--max-header-kb", type=positive_int, default=d["max_header_kb"].default,
                   help="request line and headers together (400 beyond)")
    p.add_argument("--max-connections", type=positive_int, default=d["max_connections"].default,
                   help="open connections at once; more get 503 and are closed")
    p.add_argument("--decode-workers", type=int, default=0,
                   help="threads decoding images off the event loop (0: min(4, cores))")
    p.add_argument("--allowed-hosts", nargs="+", metavar="NAME",
                   help="Host header names to answer, '*' for any (default: the loopback names on a loopback "
                        "bind, which stops DNS rebinding; any name otherwise)")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (a local Ray unless RAY_ADDRESS is set)")
    p.add_argument("--replicas", type=positive_int, default=2, help="with --ray: how many copies of the model")


def run_serve(args: argparse.Namespace) -> int:
    from ..serve import create_app
    from ..serve.limits import Limits, check_port, default_hosts

    check_port(args.port)
    limits = Limits(max_body_mb=args.max_body_mb, timeout_s=args.timeout_s, max_queue=args.max_queue,
                    max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_files=args.max_files,
                    read_timeout_s=args.read_timeout_s, header_timeout_s=args.header_timeout_s,
                    keep_alive_s=args.keep_alive_s, max_header_kb=args.max_header_kb,
                    max_connections=args.max_connections, decode_workers=args.decode_workers,
                    allowed_hosts=tuple(args.allowed_hosts or default_hosts(args.host)))
    if args.ray:
        from ..serve.ray import serve_on_ray

        serve_on_ray(args.src, args.backend, limits, args.replicas, args.host, args.port)
        return 0
    import signal

    from ..serve.http import run

    app = create_app(args.src, args.backend, limits, trust_compiled=args.trust_compiled)
    # On SIGTERM uvicorn stops accepting, lets the requests in flight finish and runs the app's shutdown
    # (the batcher drains). Then it restores the handler it found and raises the signal again: with this
    # no-op handler in place, a graceful SIGTERM ends the process with status 0, as a service manager
    # expects.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    run(app, args.host, args.port, limits)
    return 0
