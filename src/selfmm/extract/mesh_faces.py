"""Face-mesh visual frames: detect, track and measure one face per sampled frame.

The face detector finds the face; the landmark model runs on a square region around it, turned
so that the eyes lie level; the next frame's region comes from this frame's landmarks, as in
MediaPipe's face mesh. The detector runs again when the landmark model's face score drops below
PRESENCE (the face was lost), on the first frame, and once every DETECT_EVERY frames to notice a
second face. With several faces the largest is tracked, and the frame says so.

Every sampled frame gives a row: frames without a face are all zeros (`face_present` 0) so that
rows keep their times; a clip without a face in any frame has no rows (flag `no_face`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .face_geometry import (
    CHEEKS,
    EXPRESSION,
    IBUG68,
    Pose,
    canonical_face,
    expression,
    face_frame,
    fit_pose,
    head_roll,
    ibug68,
)
from .face_models import N_LANDMARKS, FaceDetector, FaceLandmarker, region_from_detection, region_from_landmarks

PRESENCE = 0.5  # the landmark model's face score below which the face counts as lost
DETECT_EVERY = 10  # sampled frames between detector runs while a face is tracked (1 s at 10 fps)
# At 10 frames per second a head can tilt further between frames than the landmark model,
# given a region turned the old way, follows (about 13 degrees at once): when the eye line
# it finds is more than REFINE_DEGREES off the region's, it runs again on the turned region,
# at most REFINE_RUNS more times.
REFINE_DEGREES = 8.0
REFINE_RUNS = 3

POSITION = ("face_present", "face_score", "face_x", "face_y", "face_size", "several_faces")
POSE = ("head_yaw", "head_pitch", "head_roll")
DELTA_OF = ("face_x", "face_y", "face_size", *POSE, *EXPRESSION)
MESH_COLUMNS: tuple[str, ...] = (
    *POSITION, *POSE, *EXPRESSION,
    *(f"d_{name}" for name in DELTA_OF),
    *(f"lm_x_{i}" for i in range(len(IBUG68))),
    *(f"lm_y_{i}" for i in range(len(IBUG68))),
)
# MMSA-FET's face-mesh layout: x, y, z of each landmark in turn, x and z over the frame width,
# y over its height (MediaPipe's normalised landmarks).
MESH_RAW_COLUMNS: tuple[str, ...] = tuple(f"{axis}_{i}" for i in range(N_LANDMARKS) for axis in "xyz")


@dataclass(frozen=True)
class TrackedFace:
    landmarks: np.ndarray  # (468, 3) float32, frame pixels
    score: float  # the landmark model's face score

    @property
    def pose(self) -> Pose:
        return fit_pose(face_frame(self.landmarks.astype(np.float64)))


@dataclass
class FaceTrack:
    """One clip's faces: per sampled frame the tracked face (or None), and whether the latest
    detection saw more than one face."""

    faces: list[TrackedFace | None]
    several: list[bool]
    sizes: list[tuple[int, ...]]  # (height, width) of each frame


def _turn(angle: float) -> float:
    """`angle` (radians) brought into [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


class FaceTracker:
    """One clip's tracking state: feed it the sampled RGB frames in time order with `add`."""

    def __init__(self, detector: FaceDetector, landmarker: FaceLandmarker) -> None:
        self.detector, self.landmarker = detector, landmarker
        self.track = FaceTrack([], [], [])
        self.region = None
        self.several = False
        self.since_detect = 0

    def _detect(self, rgb: np.ndarray):
        found = self.detector.detect(rgb)
        self.several, self.since_detect = len(found) > 1, 0
        return max(found, key=lambda d: d.area) if found else None

    def add(self, rgb: np.ndarray) -> None:
        """Track the face into the next frame, (H, W, 3) uint8."""
        detected = False
        if self.region is None or self.since_detect >= DETECT_EVERY:
            best = self._detect(rgb)
            detected = True
            if self.region is None and best is not None:
                self.region = region_from_detection(best)
        self.since_detect += 1
        face = None
        used = self.region  # the region the landmarks come from
        if used is not None:
            points, score = self.landmarker.run(rgb, used)
            if score < PRESENCE and not detected:  # lost while tracking: look again
                best = self._detect(rgb)
                self.since_detect = 1
                if best is not None:
                    used = region_from_detection(best)
                    points, score = self.landmarker.run(rgb, used)
            if score >= PRESENCE and np.isfinite(points).all():
                region = region_from_landmarks(points)
                for _ in range(REFINE_RUNS):
                    if abs(math.degrees(_turn(region.angle - used.angle))) <= REFINE_DEGREES:
                        break
                    again, again_score = self.landmarker.run(rgb, region)
                    if again_score < PRESENCE or not np.isfinite(again).all():
                        break
                    used, points, score = region, again, again_score
                    region = region_from_landmarks(points)
                face = TrackedFace(points.astype(np.float32), score)
                self.region = region
            else:
                self.region = None
        self.track.faces.append(face)
        self.track.several.append(self.several)
        self.track.sizes.append(rgb.shape[:2])


class MeshModels:
    """Holds the two loaded models (about 50 ms to load: once per process)."""

    def __init__(self) -> None:
        self.detector = FaceDetector()
        self.landmarker = FaceLandmarker()

    def start(self) -> FaceTracker:
        return FaceTracker(self.detector, self.landmarker)

    def track(self, frames: list[np.ndarray]) -> FaceTrack:
        """Faces in RGB frames (H, W, 3) uint8, sampled in time order."""
        state = self.start()
        for rgb in frames:
            state.add(rgb)
        return state.track


def _canonical_width() -> float:
    a, b = canonical_face()[list(CHEEKS)]
    return float(np.linalg.norm(a - b))


def face_values(face: TrackedFace, height: int, width: int) -> dict[str, float | np.ndarray]:
    """The measures of one tracked face in a frame of `height` x `width` pixels."""
    points = face.landmarks.astype(np.float64)
    pose = face.pose
    yaw, pitch = pose.yaw_pitch
    normalised = pose.normalise(face_frame(points))
    return {
        "face_score": face.score,
        "face_x": float(points[:, 0].mean() / width),
        "face_y": float(points[:, 1].mean() / height),
        # The fitted scale, not a box: turning the head does not shrink it.
        "face_size": pose.scale * _canonical_width() / width,
        "head_yaw": yaw,
        "head_pitch": pitch,
        "head_roll": head_roll(points),
        "expression": expression(normalised),
        "ibug68": ibug68(normalised),
    }


def mesh_rows(track: FaceTrack) -> np.ndarray:
    """(T, len(MESH_COLUMNS)) float32, one row per frame; (0, D) when no frame has a face."""
    if not any(f is not None for f in track.faces):
        return np.zeros((0, len(MESH_COLUMNS)), np.float32)
    index = {name: i for i, name in enumerate(MESH_COLUMNS)}
    rows = np.zeros((len(track.faces), len(MESH_COLUMNS)), np.float64)
    delta_cols = [index[name] for name in DELTA_OF]
    first_delta = index[f"d_{DELTA_OF[0]}"]
    lm_x = index["lm_x_0"]
    n68 = len(IBUG68)
    for t, (face, several, (height, width)) in enumerate(zip(track.faces, track.several, track.sizes,
                                                             strict=True)):
        row = rows[t]
        row[index["several_faces"]] = float(several)
        if face is None:
            continue
        values = face_values(face, height, width)
        row[index["face_present"]] = 1.0
        for name in ("face_score", "face_x", "face_y", "face_size", *POSE):
            row[index[name]] = values[name]
        row[index[EXPRESSION[0]]:index[EXPRESSION[0]] + len(EXPRESSION)] = values["expression"]
        row[lm_x:lm_x + n68] = values["ibug68"][:, 0]
        row[lm_x + n68:lm_x + 2 * n68] = values["ibug68"][:, 1]
        if t > 0 and track.faces[t - 1] is not None:  # no delta across a frame without a face
            row[first_delta:first_delta + len(DELTA_OF)] = row[delta_cols] - rows[t - 1, delta_cols]
    return rows.astype(np.float32)


def mesh_raw_rows(track: FaceTrack) -> np.ndarray:
    """(T, 1404) float32: each frame's 468 landmarks, x and z over the frame width, y over its
    height; zeros where no face; (0, 1404) when no frame has a face."""
    if not any(f is not None for f in track.faces):
        return np.zeros((0, len(MESH_RAW_COLUMNS)), np.float32)
    rows = np.zeros((len(track.faces), N_LANDMARKS, 3), np.float32)
    for t, (face, (height, width)) in enumerate(zip(track.faces, track.sizes, strict=True)):
        if face is not None:
            rows[t] = face.landmarks / np.array([width, height, width])
    return rows.reshape(len(track.faces), -1)
