"""Request and response bodies of the HTTP API (they are also its OpenAPI description)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Point = Annotated[list[float], Field(min_length=3, max_length=3, description="x, y, z")]

MAX_POINTS = 100_000


class OpenPath(BaseModel):
    path: str = Field(description="scan file or DICOM folder, absolute or relative to the allowed directory")


class OrganInfo(BaseModel):
    label: int
    name: str
    display_name: str
    rgb: tuple[int, int, int]


class ScanInfo(BaseModel):
    id: str
    name: str
    shape: list[int]
    spacing_mm: list[float]
    affine: list[list[float]] = Field(description="4x4, voxel (i, j, k) -> world RAS mm")
    axcodes: str
    dtype: str
    jobs: list[str]


class QueryRequest(BaseModel):
    points: list[Point] = Field(min_length=1, max_length=MAX_POINTS)
    space: Literal["world", "voxel"] = Field(
        "world", description="world: RAS mm (as in the scan's affine); voxel: (i, j, k) indices of the scan's grid")


class Candidate(BaseModel):
    organ: str
    probability: float


class PointAnswer(BaseModel):
    point: list[float]
    voxel: list[int] = Field(description="voxel (i, j, k) of the scan's grid that was classified")
    world_mm: list[float] = Field(description="centre of that voxel, RAS mm")
    organ: str
    label: int
    probability: float
    top3: list[Candidate]


class QueryResponse(BaseModel):
    scan_id: str
    space: str
    results: list[PointAnswer]
    qc: dict | None = Field(None, description="the anatomy check: the model's and the scan's body region; outside "
                                              "the model's region every organ answer is 'unknown'")


class SegmentRequest(BaseModel):
    engine: str | None = Field(None, description="engine name (GET /api/engines); the server's default if left out")
    organs: list[str] | None = Field(None, min_length=1, max_length=256,
                                     description="organ names or aliases to segment; every organ if left out")


class EngineInfo(BaseModel):
    name: str
    description: str
    point_queries: bool = Field(description="whether the engine also answers point queries")
    default: bool = Field(description="the engine a segmentation runs when the request names none")


class FoundOrgan(OrganInfo):
    confidence: float | None = Field(None, description="mean probability over the organ's voxels, 0..1")
    cut_off: bool | None = Field(None, description="touches the scan's border: its volume is not whole")


class JobInfo(BaseModel):
    id: str
    scan_id: str
    engine: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str
    fraction: float
    error: str | None = None
    seconds: float | None = None
    organs_found: list[FoundOrgan] | None = None
    qc: dict | None = Field(None, description="the anatomy check (organscope.qc): scan region, per organ status, "
                                              "reasons, cut off")


class ErrorBody(BaseModel):
    detail: str
