"""Request and response models: the OpenAPI contract of the server.

Built per app from the configured limits, so ``/openapi.json`` states the real bounds
(query length, ``k``, batch size, vector width) and schema-driven tests generate inputs on
both sides of them. Out-of-bounds input fails validation with 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from serving.config import NAME_PATTERN, Limits



def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; strict pydantic would not (and must still refuse True, "3")."""
    return int(value) if type(value) is float and value.is_integer() else value


def Int(**constraints):
    """An integer field: strict (no "3", no true) except that integral floats count, as in JSON Schema."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]


Mode = Literal["sparse", "dense", "hybrid"]
CollectionName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Path = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Weight = Annotated[float, Field(ge=0, le=1e9)]
Value = Annotated[float, Field(ge=-1e9, le=1e9)]
TermIndex = Int(ge=0, le=2**31 - 1)
MAX_FUSION_K = 1e6
MAX_DEPTH = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _one_of_required(*names: str) -> dict:
    """Schema text for "at least one of these keys, not null" (what the model validators check)."""
    return {"anyOf": [{"required": [n], "properties": {n: {"type": ["object", "array"]}}} for n in names]}


class FusionParams(_Model):
    """Overrides of the collection's fusion settings for a hybrid search (unset: the collection's)."""

    method: Literal["rrf", "linear"] | None = Field(None, description="'rrf' (reciprocal rank) or 'linear'")
    k: float | None = Field(None, ge=0, le=MAX_FUSION_K, description="RRF constant (60 in Cormack et al.)")
    alpha: float | None = Field(None, ge=0, le=1, description="linear: weight of the sparse list")
    norm: Literal["minmax", "zscore"] | None = Field(None, description="linear: score normalisation")
    depth: Int(ge=1, le=MAX_DEPTH) | None = Field(None, description="candidates taken from each retriever")


class SparseIds(_Model):
    indices: list[TermIndex]
    values: list[Weight]

    @model_validator(mode="after")
    def _same_length(self) -> "SparseIds":
        if len(self.indices) != len(self.values):
            raise ValueError(f"indices and values differ in length ({len(self.indices)} vs {len(self.values)})")
        return self


class Hit(BaseModel):
    id: str
    score: float
    fields: dict[str, Any] | None = Field(None, description="stored fields (an 'image' URL is shown by the page)")


class Timings(BaseModel):
    encode_ms: float
    search_ms: float
    fuse_ms: float
    fields_ms: float
    total_ms: float


class SearchResponse(BaseModel):
    collection: str
    generation: int = Field(description="version of the collection that answered (1 + hot swaps)")
    mode: str
    hits: list[Hit]
    timings: Timings


class QueryHits(BaseModel):
    hits: list[Hit]


class BatchSearchResponse(BaseModel):
    collection: str
    generation: int
    mode: str
    results: list[QueryHits]
    timings: Timings


class ErrorInfo(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo


class SwapSide(_Model):
    bundle: Path | None = Field(None, description="bundle path (relative to the config file); unset: the current one")
    encoder: Path | None = Field(None, description="encoder folder or 'bundle'; unset: the current one")


class SwapRequest(_Model):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_of_required("sparse", "dense"))

    collection: CollectionName
    sparse: SwapSide | None = None
    dense: SwapSide | None = None

    @model_validator(mode="after")
    def _something(self) -> "SwapRequest":
        if self.sparse is None and self.dense is None:
            raise ValueError("give 'sparse' and/or 'dense' ({} reloads that side from its current paths)")
        return self


class SwapResponse(BaseModel):
    collection: str
    generation: int
    swapped: list[str]
    sparse: dict[str, Any] | None
    dense: dict[str, Any] | None


@dataclass
class Models:
    """The request models of one app, with its limits baked in."""

    search: type[BaseModel]
    batch: type[BaseModel]
    vector: type[BaseModel]
    vector_batch: type[BaseModel]


def build_models(limits: Limits) -> Models:
    Query = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars, pattern=r"\S")]
    K = Annotated[Int(ge=1, le=limits.max_k), Field(description="number of hits per query")]
    Fields = Annotated[list[FieldName] | None, Field(
        None, max_length=limits.max_fields,
        description="stored fields to return; unset: the collection's default, []: none")]
    Dense = Annotated[list[Value], Field(min_length=1, max_length=limits.max_vector_dim)]
    Tokens = Annotated[dict[Token, Weight], Field(max_length=limits.max_vector_dim)]

    class Common(_Model):
        collection: CollectionName | None = Field(None, description="unset: the only collection, if just one")
        k: K = 10
        fields: Fields = None
        fusion: FusionParams | None = None

    class SearchRequest(Common):
        query: Query
        mode: Mode | None = Field(None, description="unset: the collection's default mode")

    class BatchSearchRequest(Common):
        queries: Annotated[list[Query], Field(min_length=1, max_length=limits.max_batch)]
        mode: Mode | None = None

    class SparseIdsLimited(SparseIds):
        indices: Annotated[list[TermIndex], Field(max_length=limits.max_vector_dim)]
        values: Annotated[list[Weight], Field(max_length=limits.max_vector_dim)]

    Sparse = SparseIdsLimited | Tokens

    class VectorQuery(_Model):
        """A query given as vectors: dense, sparse or both (both: a hybrid search)."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_of_required("dense", "sparse"))

        dense: Dense | None = None
        sparse: Sparse | None = Field(None, description="{indices, values} or {token: weight}")

        @model_validator(mode="after")
        def _one(self):
            if self.dense is None and self.sparse is None:
                raise ValueError("give a dense vector, a sparse vector, or both")
            return self

    class VectorSearchRequest(VectorQuery, Common):
        pass

    class VectorBatchRequest(Common):
        queries: Annotated[list[VectorQuery], Field(min_length=1, max_length=limits.max_batch)]

    return Models(SearchRequest, BatchSearchRequest, VectorSearchRequest, VectorBatchRequest)


def vector_item(q: BaseModel) -> dict:
    """A validated vector query as the plain dict :func:`serving.search.search_vectors` takes."""
    sparse = q.sparse
    if isinstance(sparse, BaseModel):
        sparse = {"indices": sparse.indices, "values": sparse.values}
    return {"dense": q.dense, "sparse": sparse}
