"""`uvicorn retrievalapi.main:app`: the app built from the environment (WORKDIR, DATASET_ROOT, MODELS, ...)."""

from .app import create_app

app = create_app()
