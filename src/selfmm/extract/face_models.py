"""MediaPipe's face detector and face landmark model, run with LiteRT (`ai-edge-litert`).

The two `.tflite` files ship inside this package (assets/, Apache-2.0, from MediaPipe; see
assets/README.md), each checked against its SHA-256 when first loaded: nothing is downloaded.

- Detector: BlazeFace short range, 128 x 128 RGB in [-1, 1], 896 SSD anchors; per anchor a box
  and six keypoints (right eye, left eye, nose tip, mouth, right ear, left ear: the subject's
  right and left). Scores through a sigmoid, threshold 0.5, weighted non-maximum suppression
  (IoU 0.3), as MediaPipe's face detection graph.
- Landmarks: 192 x 192 RGB in [0, 1] of a square, rotated face region; 468 points (x, y in the
  region's pixels, z on the scale of x) and a face-presence logit.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SelfMMError

ASSETS = Path(__file__).with_name("assets")
# SHA-256 of each packaged file: a damaged or replaced model is refused, not run.
ASSET_SHA256 = {
    "face_detection_short_range.tflite": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    "face_landmark.tflite": "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
    "canonical_face.obj": "d8007d130dabc195a43d2e5e573329082dd950e27ace3c830c98d6134c0fbb1a",
}
LITERT = ("ai_edge_litert", "ai-edge-litert")  # import name, pip package

DETECT_SIZE = 128
DETECT_SCORE = 0.5
NMS_IOU = 0.3
LANDMARK_SIZE = 192
N_LANDMARKS = 468
ROI_SCALE = 1.5  # the face region is 1.5 times the face's box (MediaPipe's margin)

_verified: set[Path] = set()


def asset(name: str) -> Path:
    """The packaged file `name`, once its SHA-256 is checked (SelfMMError naming it if not)."""
    path = ASSETS / name
    if path in _verified:
        return path
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SelfMMError(f"{path}: cannot read the packaged model file ({exc.strerror or exc}); "
                          "reinstall selfmm") from None
    if digest != ASSET_SHA256[name]:
        raise SelfMMError(f"{path}: SHA-256 {digest[:16]}... does not match the packaged model's "
                          f"{ASSET_SHA256[name][:16]}...; the file is damaged or replaced, reinstall selfmm")
    _verified.add(path)
    return path


@contextlib.contextmanager
def _quiet_stderr():
    """LiteRT's C++ runtime prints an INFO line about its CPU delegate on file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter(name: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise SelfMMError("mesh face features need ai-edge-litert: pip install 'selfmm[video]'") from None
    path = asset(name)
    with _quiet_stderr():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
    return interpreter


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in frame pixels
    keypoints: np.ndarray  # (6, 2) x, y in frame pixels
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass(frozen=True)
class Region:
    """A square face region: centre and side in frame pixels, rotation in radians (the angle of
    the region's x axis, clockwise on screen, as the eye line of an upright face is 0)."""

    cx: float
    cy: float
    size: float
    angle: float


def ssd_anchors() -> np.ndarray:
    """(896, 2) anchor centres in [0, 1]: BlazeFace short range's SSD layers (strides 8, 16, 16,
    16, two anchors each, the three stride-16 layers sharing one grid), fixed size 1 x 1."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = DETECT_SIZE // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: each cluster of overlapping candidates
    becomes their score-weighted mean box and keypoints, with the best candidate's score."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    out = []
    remaining = np.ones(len(scores), bool)
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        cluster = remaining & (_iou(boxes[i], boxes) > iou)
        cluster[i] = True
        weights = scores[cluster][:, None]
        total = weights.sum()
        out.append(((boxes[cluster] * weights).sum(0) / total,
                    (keypoints[cluster] * weights[:, :, None]).sum(0) / total, float(scores[i])))
        remaining &= ~cluster
    return out


class FaceDetector:
    """BlazeFace short range on whole frames (letterboxed to a square)."""

    def __init__(self) -> None:
        self.interpreter = _interpreter("face_detection_short_range.tflite")
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self.regressors, self.classificators = outputs["regressors"], outputs["classificators"]
        self.anchors = ssd_anchors()
        self._canvas = np.zeros((DETECT_SIZE, DETECT_SIZE, 3), np.uint8)
        # The model's input, filled in place: fresh arrays of this size cost more than the
        # arithmetic (a new allocation of them each frame).
        self._input = np.empty((1, DETECT_SIZE, DETECT_SIZE, 3), np.float32)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """The faces in an RGB frame (H, W, 3) uint8, best first."""
        import cv2

        h, w = rgb.shape[:2]
        side = max(h, w)
        scale = DETECT_SIZE / side
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        ox, oy = (DETECT_SIZE - sw) // 2, (DETECT_SIZE - sh) // 2
        canvas = self._canvas
        canvas[:] = 0
        canvas[oy:oy + sh, ox:ox + sw] = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
        np.multiply(canvas, np.float32(2 / 255), out=self._input[0], casting="unsafe")
        self._input -= 1  # [0, 255] -> [-1, 1]
        self.interpreter.set_tensor(self.input, self._input)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.regressors)[0]  # (896, 16)
        logits = self.interpreter.get_tensor(self.classificators)[0, :, 0]
        scores = 1 / (1 + np.exp(-np.clip(logits.astype(np.float64), -100, 100)))
        keep = scores >= DETECT_SCORE
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep] / DETECT_SIZE, scores[keep], self.anchors[keep]
        centre = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        found = []
        # From the padded square's [0, 1] back to frame pixels.
        shift = np.array([ox, oy], np.float32) / DETECT_SIZE
        for box, kps, score in weighted_nms(boxes, points, scores):
            box_px = (box.reshape(2, 2) - shift) * side
            found.append(Detection(box=box_px.reshape(4), keypoints=(kps - shift) * side, score=score))
        return found


def region_from_detection(det: Detection) -> Region:
    """The landmark model's input region for a detection: the box's centre, its longer side
    times ROI_SCALE, turned so that the eyes (keypoints 0 and 1) lie level."""
    (x0, y0, x1, y1), (right_eye, left_eye) = det.box, det.keypoints[:2]
    angle = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
    return Region(cx=float(x0 + x1) / 2, cy=float(y0 + y1) / 2, size=float(max(x1 - x0, y1 - y0)) * ROI_SCALE,
                  angle=angle)


def region_from_landmarks(landmarks: np.ndarray, right_eye: int = 33, left_eye: int = 263) -> Region:
    """The region for the next frame, from this frame's landmarks: their box in the frame turned
    by the eye line (outer eye corners), its longer side times ROI_SCALE."""
    d = landmarks[left_eye, :2] - landmarks[right_eye, :2]
    angle = math.atan2(d[1], d[0])
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # frame -> region axes
    local = landmarks[:, :2] @ rot.T
    lo, hi = local.min(0), local.max(0)
    centre = ((lo + hi) / 2) @ rot  # region axes -> frame
    return Region(cx=float(centre[0]), cy=float(centre[1]), size=float(max(hi - lo)) * ROI_SCALE, angle=angle)


def region_matrix(region: Region, out_size: int) -> np.ndarray:
    """(2, 3) affine map from the region's output pixels (u, v) to frame pixels (x, y)."""
    k = region.size / out_size
    c, s = math.cos(region.angle) * k, math.sin(region.angle) * k
    half = out_size / 2
    return np.array([[c, -s, region.cx - c * half + s * half],
                     [s, c, region.cy - s * half - c * half]])


class FaceLandmarker:
    """MediaPipe's face landmark model on a rotated square region of a frame."""

    def __init__(self) -> None:
        self.interpreter = _interpreter("face_landmark.tflite")
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = {tuple(d["shape"]): d["index"] for d in self.interpreter.get_output_details()}
        self.points, self.presence = outputs[(1, 1, 1, 3 * N_LANDMARKS)], outputs[(1, 1, 1, 1)]
        self._input = np.empty((1, LANDMARK_SIZE, LANDMARK_SIZE, 3), np.float32)  # filled in place

    def run(self, rgb: np.ndarray, region: Region) -> tuple[np.ndarray, float]:
        """(468, 3) landmarks in frame pixels (z on the scale of x, smaller is nearer the camera)
        and the face-presence score in [0, 1]."""
        import cv2

        matrix = region_matrix(region, LANDMARK_SIZE)
        crop = cv2.warpAffine(rgb, matrix, (LANDMARK_SIZE, LANDMARK_SIZE),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        np.multiply(crop, np.float32(1 / 255), out=self._input[0], casting="unsafe")  # [0, 1]
        self.interpreter.set_tensor(self.input, self._input)
        self.interpreter.invoke()
        local = self.interpreter.get_tensor(self.points).reshape(N_LANDMARKS, 3)
        logit = float(self.interpreter.get_tensor(self.presence).reshape(()))
        out = np.empty((N_LANDMARKS, 3), np.float64)
        out[:, :2] = local[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        out[:, 2] = local[:, 2] * (region.size / LANDMARK_SIZE)
        return out, 1 / (1 + math.exp(-max(-100.0, min(100.0, logit))))
