"""One settings object for the library, the CLI and the API.

Values come from (highest first) CLI flags, environment variables, a `.env` file, then defaults.
The seed's variable names keep working: `DATASET_ROOT`, and `WORKDIR_ROOT` as an alias of `WORKDIR`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    dataset_root: Path = Field(
        Path("data/fashion-product-small"),
        validation_alias=AliasChoices("DATASET_ROOT", "dataset_root"),
        description="Fashion Product Images folder holding styles.csv and images/.",
    )
    deepfashion_root: Path = Field(
        Path("data/deepfashion-inshop"),
        validation_alias=AliasChoices("DEEPFASHION_ROOT", "deepfashion_root"),
        description="DeepFashion In-shop folder holding img/.",
    )
    workdir: Path = Field(
        Path("workdir"),
        validation_alias=AliasChoices("WORKDIR", "WORKDIR_ROOT", "workdir"),
        description="Where every artifact (splits, features, indexes, trained models) is written.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", validation_alias=AliasChoices("DEVICE", "device"))
    default_model: str = Field(
        "efficientnet_lite0_fashion", validation_alias=AliasChoices("DEFAULT_MODEL", "default_model")
    )
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        validation_alias=AliasChoices("PRECISION", "precision"),
        description="auto = bf16 autocast where the hardware supports it fast, else fp32; int8 = the model's "
                    "int8 export accepted by `imageretrieval quantize` (ONNX Runtime or OpenVINO).",
    )
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto",
        validation_alias=AliasChoices("RUNTIME", "runtime"),
        description="Inference runtime for extraction, search and evaluation: auto = PyTorch on CUDA (and for "
                    "bf16), else ONNX Runtime when installed, else OpenVINO, else PyTorch (inference.py).",
    )
    compile_inference: bool = Field(
        True,
        validation_alias=AliasChoices("COMPILE_INFERENCE", "compile_inference"),
        description="RUNTIME=torch only: trace + freeze the query encoder for fp32 CPU inference (folds batch "
                    "norms); off = plain eager PyTorch.",
    )
    batch_size: int = Field(32, validation_alias=AliasChoices("BATCH_SIZE", "batch_size"), ge=1)
    num_workers: int = Field(1, validation_alias=AliasChoices("NUM_WORKERS", "num_workers"), ge=0)
    seed: int = Field(42, validation_alias=AliasChoices("SEED", "seed"))
    pca_components: int | None = Field(
        None,
        validation_alias=AliasChoices("PCA_COMPONENTS", "pca_components"),
        description="PCA-whitening output dims; None = keep the model's tuned value or its full dims.",
    )
    index_factory: str = Field(
        "auto",
        validation_alias=AliasChoices("INDEX_FACTORY", "index_factory"),
        description='FAISS factory string ("Flat", "HNSW32", "IVF1024,PQ32", ...); "auto" = exact Flat for '
                    "small catalogs, HNSW32 when an exact search would cost milliseconds per query.",
    )
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        validation_alias=AliasChoices("INDEX_BACKEND", "index_backend"),
        description="Where the vectors are searched: faiss = in this process (the embedded default); milvus = a "
                    "Milvus collection per model that every process of a deployment shares (MILVUS_URI).",
    )
    milvus_uri: str = Field(
        "",
        validation_alias=AliasChoices("MILVUS_URI", "milvus_uri"),
        description="A local path = Milvus Lite, embedded (default: <WORKDIR>/milvus.db); http://host:19530 = a "
                    "Milvus standalone or distributed server.",
    )
    milvus_token: str | None = Field(
        None, validation_alias=AliasChoices("MILVUS_TOKEN", "milvus_token"),
        description="Milvus credentials (\"user:password\" or an API key) where the server requires them.",
    )
    milvus_index: str = Field(
        "auto",
        validation_alias=AliasChoices("MILVUS_INDEX", "milvus_index"),
        description='Milvus index type with parameters, e.g. "HNSW:M=32,efConstruction=200,ef=128", '
                    '"IVF_FLAT:nlist=1024,nprobe=32", "FLAT"; "auto" = FLAT for small catalogs, else HNSW '
                    "(the INDEX_FACTORY rule).",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("EXTRACT_RAY", "ray_address"),
        description="Extract on Ray Data: 'local' starts Ray on this machine, 'auto' joins the running "
                    "cluster, or a cluster address; unset = extract in this process (`--ray` sets it).",
    )
    ray_actors: int | None = Field(None, ge=1, validation_alias=AliasChoices("EXTRACT_RAY_ACTORS", "ray_actors"),
                                   description="Model replicas (Ray actors); default: the cluster's CPUs / "
                                               "EXTRACT_RAY_ACTOR_CPUS.")
    ray_actor_cpus: int = Field(1, ge=1, validation_alias=AliasChoices("EXTRACT_RAY_ACTOR_CPUS", "ray_actor_cpus"),
                                description="CPUs (inference threads) per Ray actor.")
    query_resolution: Literal["catalog", "native"] = Field(
        "catalog",
        validation_alias=AliasChoices("QUERY_RESOLUTION", "query_resolution"),
        description="'catalog' brings large queries down to the catalog's effective resolution first.",
    )

    @property
    def milvus_location(self) -> str:
        """MILVUS_URI, or the embedded Milvus Lite file under the workdir."""
        return self.milvus_uri or str(Path(self.workdir) / "milvus.db")

    @property
    def images_dir(self) -> Path:
        return self.dataset_root / "images"

