"""The same app on Ray Serve, the documented way past one machine: each replica holds the model and
its own batcher, and Ray spreads requests over the replicas (and machines, with a Ray cluster).

    mixerlab serve runs/demo --ray --replicas 4           # a local Ray, or the cluster at RAY_ADDRESS
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MixerlabError
from .app import Limits, create_app


def deployment(src: str | Path, backend: str = "torch", limits: Limits | None = None, replicas: int = 2):
    """A Ray Serve application serving `create_app(src)` on `replicas` replicas."""
    try:
        from ray import serve
    except ImportError:
        raise MixerlabError("ray is not installed; it comes with the ray extra: pip install 'mixerlab[ray]'") from None
    app = create_app(src, backend, limits)

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 1})
    @serve.ingress(app)
    class MixerlabServer:
        """Each replica serves `app` (Ray gives the class an `app` property of its own)."""

    return MixerlabServer.bind()


def serve_on_ray(src: str | Path, backend: str, limits: Limits, replicas: int, host: str, port: int) -> None:
    """Start Ray Serve on host:port with the app and block until interrupted."""
    import time

    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(src, backend, limits, replicas), name="mixerlab", route_prefix="/")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
