"""The `haar` visual set: the largest face per sampled frame (OpenCV Haar cascades), 35 values.

selfmm's first face features, kept unchanged for the runs trained on them: the frontal-face
Haar cascade bundled with opencv-python-headless (< 5; OpenCV 5 moved the cascades out), and a
descriptor of the box, cascade responses and coarse appearance of the crop. Frames without a
face are dropped.
"""

from __future__ import annotations

import numpy as np

CROP = 48  # the face crop is resized to CROP x CROP for the appearance features
PART = 96  # and to PART x PART for the eye and smile cascades
GRID = 4
HOG_BINS = 8
MIN_FACE = 24  # pixels, in the frame scaled to media.DETECT_WIDTH

HAAR_COLUMNS: tuple[str, ...] = (
    "face_x",  # box centre / frame width
    "face_y",  # box centre / frame height
    "face_w",  # box width / frame width
    "face_h",  # box height / frame height
    "face_score",  # the cascade's level weight of the box (confidence)
    "face_dx",  # change of face_x since the previous frame with a face
    "face_dy",
    "eyes",  # eye-cascade detections in the upper half of the crop, at most 3
    "smile",  # smile-cascade detections in the lower half of the crop, at most 3
    "grey_mean",  # crop intensity / 255
    "grey_std",
    *(f"grid_{r}{c}" for r in range(GRID) for c in range(GRID)),  # cell mean - grey_mean
    *(f"hog_{b}" for b in range(HOG_BINS)),  # gradient orientations, magnitude-weighted, sum 1
)


class FaceDescriber:
    """Detects the largest face in grey frames and describes it; holds the loaded cascades."""

    def __init__(self) -> None:
        import cv2

        def load(name: str):
            cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
            if cascade.empty():  # pragma: no cover - depends on the install
                raise RuntimeError(f"OpenCV cascade {name} not found in {cv2.data.haarcascades}")
            return cascade

        self.cv2 = cv2
        self.face = load("haarcascade_frontalface_default.xml")
        self.eye = load("haarcascade_eye.xml")
        self.smile = load("haarcascade_smile.xml")

    def detect(self, grey: np.ndarray) -> tuple[tuple[int, int, int, int], float] | None:
        """The largest face box (x, y, w, h) and its level weight, or None."""
        boxes, _, weights = self.face.detectMultiScale3(
            grey, scaleFactor=1.2, minNeighbors=4, minSize=(MIN_FACE, MIN_FACE),
            outputRejectLevels=True,
        )
        if len(boxes) == 0:
            return None
        i = int(np.argmax([w * h for (_, _, w, h) in boxes]))
        x, y, w, h = (int(v) for v in boxes[i])
        return (x, y, w, h), float(np.ravel(weights)[i])

    def describe(self, frames: list[np.ndarray], kept: list[int] | None = None) -> np.ndarray:
        """(T, 35) float32, one row per frame where a face was found (others dropped); the
        indices of those frames are appended to `kept` when given."""
        cv2 = self.cv2
        rows = []
        prev: tuple[float, float] | None = None
        for index, grey in enumerate(frames):
            found = self.detect(grey)
            if found is None:
                continue
            if kept is not None:
                kept.append(index)
            (x, y, w, h), score = found
            fh, fw = grey.shape
            cx, cy = (x + w / 2) / fw, (y + h / 2) / fh
            dx, dy = (0.0, 0.0) if prev is None else (cx - prev[0], cy - prev[1])
            prev = (cx, cy)
            face = grey[y : y + h, x : x + w]
            part = cv2.resize(face, (PART, PART), interpolation=cv2.INTER_AREA)
            eyes = self.eye.detectMultiScale(part[: PART // 2], 1.1, 5, minSize=(12, 12))
            smile = self.smile.detectMultiScale(part[PART // 2 :], 1.1, 15, minSize=(20, 10))
            crop = cv2.resize(face, (CROP, CROP), interpolation=cv2.INTER_AREA).astype(np.float32)
            crop /= 255.0
            mean, std = float(crop.mean()), float(crop.std())
            cell = CROP // GRID
            grid = crop.reshape(GRID, cell, GRID, cell).mean(axis=(1, 3)).ravel() - mean
            rows.append(
                np.concatenate(
                    [
                        [cx, cy, w / fw, h / fh, score, dx, dy],
                        [min(len(eyes), 3), min(len(smile), 3), mean, std],
                        grid,
                        self._hog(crop),
                    ]
                )
            )
        if not rows:
            return np.zeros((0, len(HAAR_COLUMNS)), np.float32)
        return np.asarray(rows, dtype=np.float32)

    def _hog(self, crop: np.ndarray) -> np.ndarray:
        cv2 = self.cv2
        gx = cv2.Sobel(crop, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(crop, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.hypot(gx, gy)
        angle = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
        bins = np.minimum((angle / np.pi * HOG_BINS).astype(np.int64), HOG_BINS - 1)
        hist = np.bincount(bins.ravel(), weights=mag.ravel(), minlength=HOG_BINS)
        total = hist.sum()
        return hist / total if total > 0 else hist
