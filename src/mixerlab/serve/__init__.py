"""`mixerlab serve`: an HTTP inference server (FastAPI on uvicorn) with dynamic batching, hard input
limits, health, metrics and a page to try it; the same app deploys on Ray Serve (ray.py). Needs the
serve extra (`pip install 'mixerlab[serve]'`). The app is imported on first use, so the CLI can read
`serve.limits` for its help without FastAPI."""

from ..errors import MixerlabError
from .limits import Limits

__all__ = ["Limits", "create_app"]


def __getattr__(name: str):
    if name != "create_app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from .app import create_app
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("fastapi", "starlette", "prometheus_client", "multipart",
                                                "python_multipart", "uvicorn"):
            raise
        raise MixerlabError(f"{e.name} is not installed; it comes with the serve extra: "
                            f"pip install 'mixerlab[serve]'") from None
    return create_app
