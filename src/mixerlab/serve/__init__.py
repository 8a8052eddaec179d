"""`mixerlab serve`: an HTTP inference server (FastAPI on uvicorn) with dynamic batching, hard input
limits, health, metrics and a page to try it; the same app deploys on Ray Serve (ray.py). Needs the
serve extra (`pip install 'mixerlab[serve]'`)."""

from ..errors import MixerlabError

try:
    from .app import Limits, create_app
except ImportError as e:
    if (e.name or "").split(".")[0] not in ("fastapi", "starlette", "prometheus_client", "multipart",
                                            "python_multipart"):
        raise
    raise MixerlabError(f"{e.name} is not installed; it comes with the serve extra: "
                        f"pip install 'mixerlab[serve]'") from None

__all__ = ["Limits", "create_app"]
