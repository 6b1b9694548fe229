"""API settings: the library's settings (WORKDIR, DATASET_ROOT, DEVICE, DEFAULT_MODEL, ...) plus serving knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from imageretrieval.images import DEFAULT_MAX_PIXELS
from imageretrieval.settings import Settings

REPO_APP_DIST = Path(__file__).resolve().parents[1] / "retrieval-app" / "dist"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name.upper(), name)


def split_csv(value: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: env lists are comma separated, not JSON."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class ApiSettings(Settings):
    models: str | None = Field(
        None, validation_alias=_env("models"),
        description="Comma-separated models to load; default: every model with a built index.",
    )
    max_upload_mb: float = Field(10.0, gt=0, validation_alias=_env("max_upload_mb"))
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS, gt=0, validation_alias=_env("max_image_pixels"),
        description="Uploads with more pixels are refused before decoding (decompression bombs).",
    )
    top_k_max: int = Field(100, ge=1, le=10_000, validation_alias=_env("top_k_max"))
    cors_origins: str | None = Field(None, validation_alias=_env("cors_origins"),
                                     description="Comma-separated allowed origins, or '*'.")
    batch_max: int = Field(32, ge=1, le=1024, validation_alias=_env("batch_max"),
                           description="Most images encoded in one forward pass.")
    batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, validation_alias=_env("batch_wait_ms"),
        description="Extra wait for a batch to fill. 0 = take what is queued: no added latency when idle, "
                    "full batches under load (requests queue while the previous forward runs).",
    )
    queue_max: int = Field(128, ge=1, validation_alias=_env("queue_max"),
                           description="Images waiting for a forward pass, per model; beyond it: 503.")
    max_inflight: int = Field(256, ge=1, validation_alias=_env("max_inflight"),
                              description="Search requests in progress (bodies, decoding, queued); beyond it: 503.")
    decode_workers: int = Field(2, ge=1, le=64, validation_alias=_env("decode_workers"),
                                description="Threads decoding and preprocessing uploads.")
    shutdown_grace_s: float = Field(10.0, ge=0, validation_alias=_env("shutdown_grace_s"))
    keep_warm_ms: float = Field(
        0.0, ge=0, le=60_000, validation_alias=_env("keep_warm_ms"),
        description="Between searches, run the last image search's forward and index search again every this "
                    "many ms (at least 10), so that a shopper's next search finds the caches warm (0 = off; "
                    "costs CPU while on).")
    keep_warm_s: float = Field(600.0, gt=0, validation_alias=_env("keep_warm_s"),
                               description="Keep warm for at most this long after the last search.")
    app_dist: Path | None = Field(None, validation_alias=_env("app_dist"),
                                  description="Built web app to serve at /; default retrieval-app/dist when built.")
    require_read_key: bool = Field(
        False, validation_alias=_env("require_read_key"),
        description="Searches, products and images need an API key (`imageretrieval keys create`); writes always do.",
    )
    max_batch_upload_mb: float = Field(200.0, gt=0, validation_alias=_env("max_batch_upload_mb"),
                                       description="Largest body of POST /api/products/batch (CSV + images).")
    write_rate_per_minute: float = Field(
        600.0, gt=0, validation_alias=_env("write_rate_per_minute"),
        description="Catalog write requests per minute per API key (bursts up to WRITE_BURST); beyond: 429.")
    write_burst: int = Field(60, ge=1, validation_alias=_env("write_burst"))
    compact_every: int = Field(
        10_000, ge=1, validation_alias=_env("compact_every"),
        description="Journaled catalog writes after which the journal is folded into a snapshot.")
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("log_format"))
    log_level: str = Field("INFO", validation_alias=_env("log_level"))

    @model_validator(mode="after")
    def _keep_warm_makes_sense(self) -> ApiSettings:
        if 0 < self.keep_warm_ms < 10:
            raise ValueError(f"KEEP_WARM_MS={self.keep_warm_ms:g}: use 0 (off) or at least 10 (ms)")
        if self.keep_warm_ms and self.keep_warm_s * 1000 < self.keep_warm_ms:
            raise ValueError(f"KEEP_WARM_S={self.keep_warm_s:g} is shorter than KEEP_WARM_MS={self.keep_warm_ms:g} "
                             "ms: nothing would ever be kept warm")
        return self

    @property
    def model_list(self) -> list[str]:
        return split_csv(self.models)

    @property
    def cors_origin_list(self) -> list[str]:
        return split_csv(self.cors_origins)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_upload_mb * 1024 * 1024)

    def web_app_dir(self) -> Path | None:
        """The built single-page app to serve at /, when there is one."""
        candidate = self.app_dist if self.app_dist is not None else REPO_APP_DIST
        return candidate if (candidate / "index.html").is_file() else None
