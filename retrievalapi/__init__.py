"""FastAPI search service over the precomputed indexes: `uvicorn retrievalapi.main:app`."""

from .app import create_app

__all__ = ["create_app"]
