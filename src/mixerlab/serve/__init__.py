"""`mixerlab serve`: an HTTP inference server (FastAPI on uvicorn) with dynamic batching, hard input
limits, health, metrics and a page to try it; the same app deploys on Ray Serve (ray.py). Needs the
serve extra (`pip install 'mixerlab[serve]'`)."""

try:
    from .app import Limits, create_app
except ImportError as e:  # fastapi or prometheus_client missing
    _missing = e.name

    def create_app(*args, **kwargs):  # type: ignore[no-redef]
        from ..errors import MixerlabError

        raise MixerlabError(f"{_missing} is not installed; it comes with the serve extra: "
                            f"pip install 'mixerlab[serve]'")

    Limits = None  # type: ignore[assignment,misc]

__all__ = ["Limits", "create_app"]
