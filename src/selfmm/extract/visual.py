"""Visual frames: one of three face feature sets, chosen by name (`--visual-features`).

- `mesh` (default): MediaPipe's face detector and 468-point face landmark model (LiteRT), a
  tracked face per sampled frame: position, head pose, expression geometry, their changes and
  68 pose-normalised landmarks (mesh_faces.py).
- `mesh-raw`: the same landmarks unprocessed, 468 x 3 per frame (MMSA-FET's face-mesh layout).
- `haar`: selfmm's first set, OpenCV Haar cascades and crop statistics (haar_faces.py). Files
  and runs that record no visual set were made with it.

A model needs clips extracted with the set it was trained on; the set is recorded in the
feature file and in the run, as the acoustic set is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SelfMMError
from .haar_faces import HAAR_COLUMNS, FaceDescriber
from .mesh_faces import MESH_COLUMNS, MESH_RAW_COLUMNS, FaceTrack, MeshModels, mesh_raw_rows, mesh_rows

VISION_FPS = 10.0  # frames per second sampled from the video
DEFAULT_VISUAL_FEATURES = "mesh"
LEGACY_VISUAL_FEATURES = "haar"  # the set of files and runs that record none


@dataclass(frozen=True)
class VisualFeatureSet:
    name: str
    columns: tuple[str, ...]
    module: str  # what computes it: the import name and pip package
    package: str
    frame_format: str  # the frames it reads: PyAV's "gray" or "rgb24"
    frame_width: int  # frames are scaled down to at most this width

    @property
    def dim(self) -> int:
        return len(self.columns)

    @property
    def fps(self) -> float:
        return VISION_FPS


VISUAL_SETS: dict[str, VisualFeatureSet] = {
    s.name: s for s in (
        VisualFeatureSet("mesh", MESH_COLUMNS, "ai_edge_litert", "ai-edge-litert", "rgb24", 640),
        VisualFeatureSet("mesh-raw", MESH_RAW_COLUMNS, "ai_edge_litert", "ai-edge-litert", "rgb24", 640),
        VisualFeatureSet("haar", HAAR_COLUMNS, "cv2", "opencv-python-headless", "gray", 360),
    )
}


def visual_set(name: str) -> VisualFeatureSet:
    """The feature set called `name`; SelfMMError for any other name."""
    try:
        return VISUAL_SETS[name]
    except KeyError:
        raise SelfMMError(f"unknown visual feature set {name!r}; choose one of "
                          f"{', '.join(VISUAL_SETS)}") from None


@dataclass
class VisualFrames:
    rows: np.ndarray  # (T, dim) float32
    kept: list[int]  # the decoded frame each row comes from (haar drops frames without a face)
    several_faces: bool = False  # the detector saw more than one face in some frame (mesh sets)
    track: FaceTrack | None = None  # the mesh sets' tracked faces (the overlay draws them)


_haar = None
_mesh = None


def mesh_models() -> MeshModels:
    """The mesh sets' two models, loaded once per process (their files checked by SHA-256)."""
    global _mesh
    if _mesh is None:
        _mesh = MeshModels()
    return _mesh


def haar_describer() -> FaceDescriber:
    """The haar set's FaceDescriber, loaded once per process (the cascades take ~50 ms)."""
    global _haar
    if _haar is None:
        _haar = FaceDescriber()
    return _haar


class VisualExtractor:
    """One clip's visual frames of set `name`: give it the decoded frames (in the set's
    frame_format) one by one with `add`, in time order, then call `finish`.

    The mesh sets track each frame as it comes, so a long clip's frames are never all held
    in memory; the haar set keeps its grey frames and describes them in `finish`.
    """

    def __init__(self, name: str = DEFAULT_VISUAL_FEATURES) -> None:
        self.set = visual_set(name)
        # The models load (and their files are checked) here, before any decoding.
        self._track = None if name == "haar" else mesh_models().start()
        self._frames: list[np.ndarray] = []

    def add(self, image: np.ndarray) -> None:
        if self._track is None:
            self._frames.append(image)
        else:
            self._track.add(image)

    def finish(self) -> VisualFrames:
        if self._track is None:
            kept: list[int] = []
            return VisualFrames(haar_describer().describe(self._frames, kept), kept)
        track = self._track.track
        rows = mesh_rows(track) if self.set.name == "mesh" else mesh_raw_rows(track)
        return VisualFrames(rows, list(range(len(rows))), several_faces=any(track.several), track=track)


def visual_frames(frames: list[np.ndarray], name: str = DEFAULT_VISUAL_FEATURES) -> VisualFrames:
    """Set `name`'s frames for decoded frames in that set's frame_format, in time order."""
    extractor = VisualExtractor(name)
    for image in frames:
        extractor.add(image)
    return extractor.finish()
