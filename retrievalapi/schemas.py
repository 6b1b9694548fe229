"""Response and request bodies, with the examples shown in the OpenAPI schema (/docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from imageretrieval.engine import FILTER_FIELDS
from imageretrieval.live.products import FIELDS as PRODUCT_FIELDS
from imageretrieval.rerank import RERANKS

DEFAULT_TOP_K = 15
Rerank = Literal[RERANKS]  # the engine's names, one list
RERANK_DESCRIPTION = ("none: pure visual similarity; category: the articleType voted by the nearest "
                      "products comes first (for 'more like this', the product's own type); gender: the gender "
                      "the model predicts for the photo comes first, with Unisex products (for 'more like this', "
                      "the product's own; needs the model's gender predictor, else 400); category+gender: both, "
                      "the gender first within each type part")

FILTER_DESCRIPTION = "Repeat for several values (OR); fields are AND-ed"

PRODUCT_EXAMPLE = {
    "id": 15970, "productDisplayName": "Turtle Check Men Navy Blue Shirt", "articleType": "Shirts",
    "baseColour": "Navy Blue", "gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear",
    "season": "Fall", "usage": "Casual", "year": 2011, "image_url": "/api/images/15970?v=0",
}


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["top_k: Input should be less than or equal to 100"])


class Product(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PRODUCT_EXAMPLE]})

    id: int
    productDisplayName: str | None = None
    articleType: str | None = None
    baseColour: str | None = None
    gender: str | None = None
    masterCategory: str | None = None
    subCategory: str | None = None
    season: str | None = None
    usage: str | None = None
    year: int | None = None
    image_url: str


class Hit(Product):
    model_config = ConfigDict(json_schema_extra={"examples": [{"rank": 1, "score": 0.873214, **PRODUCT_EXAMPLE}]})

    rank: int = Field(ge=1)
    score: float


class SearchResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "efficientnet_lite0_fashion", "took_ms": 61.4, "rerank": "category+gender", "type_first": "Shirts",
        "gender_first": "Men", "results": [{"rank": 1, "score": 0.873214, **PRODUCT_EXAMPLE}],
    }]})

    model: str
    took_ms: float
    rerank: Rerank = "none"
    type_first: str | None = Field(None, description="with rerank=category or category+gender: the articleType "
                                                     "shown first (the vote's winner; for by-id the product's own "
                                                     "type when any result has it); null otherwise")
    gender_first: str | None = Field(None, description="with rerank=gender or category+gender: the gender shown "
                                                       "first (predicted for the photo; for by-id the product's "
                                                       "own) when any result has it; null otherwise")
    results: list[Hit]


class ModelInfo(BaseModel):
    name: str
    description: str | None = None
    backbone: str | None = None
    kind: str | None = None
    dims: int
    index_type: str | None = None
    index_size: int
    input_size: int | None = Field(None, description="input height in pixels")
    input_width: int | None = Field(None, description="input width in pixels")
    runtime: str | None = Field(None, description="inference runtime: onnxruntime, openvino or torch")
    precision: str | None = Field(None, description="the query encoder's precision: fp32, int8 or bf16")
    default: bool
    reranks: list[Rerank] = Field(["none", "category"], description="the rerank values its image searches accept "
                                  "(gender needs the model's gender predictor, `imageretrieval finetune-rerank "
                                  "--gender`, and an index without PCA-whitening)")
    evaluation: dict | None = Field(None, description="<WORKDIR>/results/<model>/summary.json; null until evaluated")


class ModelsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "default": "efficientnet_lite0", "synthetic_catalog": False,
        "models": [{"name": "efficientnet_lite0", "description": "EfficientNet-Lite0, ImageNet weights",
                    "backbone": "efficientnet_lite0", "kind": "pretrained", "dims": 256, "index_type": "Flat",
                    "index_size": 44072, "input_size": 224, "input_width": 224,
                    "runtime": "onnxruntime", "precision": "fp32", "default": True,
                    "reranks": ["none", "category", "gender", "category+gender"],
                    "evaluation": {"mAP": 0.41, "R@1": 0.62, "protocol": "fashion-seed test"}}],
    }]})

    default: str
    synthetic_catalog: bool
    models: list[ModelInfo]


class FacetValue(BaseModel):
    value: str
    count: int


# one list of values per filter field of the engine (FILTER_FIELDS): the fields are defined once
FacetsResponse = create_model(
    "FacetsResponse",
    __config__=ConfigDict(json_schema_extra={"examples": [{
        f: [{"value": "Men", "count": 22147}, {"value": "Women", "count": 18631}] if f == "gender" else []
        for f in FILTER_FIELDS}]}),
    **{f: (list[FacetValue], ...) for f in FILTER_FIELDS},
)


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    models: list[str] = Field(examples=[["efficientnet_lite0"]])


class FilteredRequest(BaseModel):
    """A JSON or form search body: filter fields (each one value or a list), unknown fields refused."""

    @field_validator(*FILTER_FIELDS, mode="before", check_fields=False)
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    def filters(self) -> dict[str, list[str]]:
        return {f: getattr(self, f) for f in FILTER_FIELDS if getattr(self, f)}


def _search_body(name: str, top_k_max: int, examples: list[dict], **fields) -> type[BaseModel]:
    """A search body with `fields`, model, top_k/topK and the filters; built per app (top_k's bound is a setting)."""
    common = {
        "model": (str | None, Field(None, description="Model name (default: the default model)")),
        "top_k": (int | None, Field(None, ge=1, le=top_k_max, description=f"Results wanted (default {DEFAULT_TOP_K})")),
        "topK": (int | None, Field(None, ge=1, le=top_k_max, description="Alias of top_k (the seed's name)")),
    }
    filters = {f: (list[str] | None, Field(None, description=FILTER_DESCRIPTION)) for f in FILTER_FIELDS}
    base = type(f"{name}Base", (FilteredRequest,),
                {"model_config": ConfigDict(extra="forbid", json_schema_extra={"examples": examples})})
    return create_model(name, __base__=base, **fields, **common, **filters)


def make_by_id_request(top_k_max: int) -> type[BaseModel]:
    """The 'more like this' body."""
    return _search_body(
        "ByIdRequest", top_k_max,
        [{"product_id": 15970, "model": "efficientnet_lite0", "top_k": 15, "gender": ["Men"]}],
        product_id=(int, Field(description="Catalog product id; the product itself is left out of the results")),
        rerank=(Rerank, Field("none", description=RERANK_DESCRIPTION)))


TEXT_MODE_DESCRIPTION = ("hybrid: words matched by meaning (the model's text projection) and by letter (BM25 over "
                         "names and attributes), fused; semantic: by meaning only; lexical: BM25 only")
Q_DESCRIPTION = ("Words, e.g. 'navy striped polo for men' or a brand; with an image, the words refine it "
                 "('but in red'). At most 200 characters")


def make_text_request(top_k_max: int) -> type[BaseModel]:
    """The search-by-words body."""
    return _search_body(
        "TextSearchRequest", top_k_max,
        [{"q": "navy striped polo for men", "top_k": 15}, {"q": "red dress", "gender": ["Women"]},
         {"q": "Puma", "mode": "lexical"}],
        q=(str, Field(description=Q_DESCRIPTION)),
        mode=(Literal["hybrid", "semantic", "lexical"], Field("hybrid", description=TEXT_MODE_DESCRIPTION)))


class WriteChange(BaseModel):
    id: int
    action: Literal["added", "updated", "deleted", "unchanged"]


class WriteResponse(BaseModel):
    """A catalog write, acknowledged: durable (journaled, fsynced) and visible to every search."""

    seq: int = Field(description="The journal sequence number of the write (unchanged when nothing changed)")
    changes: list[WriteChange]
    indexes: list[str] = Field(description="Models whose index now reflects the write")
    catalog_size: int = Field(description="Products in the catalog after the write")


# PATCH body: only the fields to change, by their `styles.csv` column names (null clears one); unknown refused
ProductPatch = create_model(
    "ProductPatch",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [{"baseColour": "Navy Blue",
                                                                            "season": "Winter"}]}),
    **{name: (int | None if name == "year" else str | None, None) for name in PRODUCT_FIELDS},
)
