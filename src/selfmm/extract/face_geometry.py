"""Head pose and expression geometry from MediaPipe's 468 face-mesh landmarks (pure numpy).

Coordinates: landmarks come in frame pixels, x right, y down, z smaller nearer the camera (the
landmark model's output). The "face frame" turns that into x right, y up, z towards the camera,
the axes of MediaPipe's canonical face model (a 468-vertex average face in cm, frontal, its
origin inside the head), so that a frontal face has rotation identity.

Pose: a weighted similarity fit (scale, rotation, translation; Umeyama's least squares) of the
canonical face to the landmarks, on the rigid points MediaPipe's own face-geometry module uses
(eye corners, nose, cheekbones, forehead; not the lips or the jaw, which move with the
expression). Yaw and pitch are the direction the fitted face points. Roll is the eye line's
angle to the horizontal in the frame.

Expression: distances in the pose-normalised face (the landmarks mapped back through the fitted
rotation and scale, so a turned head does not shorten them), divided by the inter-ocular
distance (between the eye centres, each the mean of its two corners).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .face_models import asset

# Landmark indices of the 468-point mesh (subject's right = the image's left side).
RIGHT_EYE_CORNERS, LEFT_EYE_CORNERS = (33, 133), (362, 263)  # outer, inner / inner, outer
RIGHT_EYE_LIDS, LEFT_EYE_LIDS = (159, 145), (386, 374)  # upper, lower
RIGHT_BROW, LEFT_BROW = (70, 63, 105, 66, 107), (336, 296, 334, 293, 300)
MOUTH_CORNERS = (61, 291)  # subject's right, left
INNER_LIPS = (13, 14)  # upper, lower: the mouth's opening
CHEEKS = (234, 454)  # the face's sides: its width on the canonical face is CANONICAL_WIDTH

# MediaPipe's Procrustes basis for the canonical face fit (face_geometry's
# geometry_pipeline_metadata_landmarks): landmark id and weight. Rigid points only.
PROCRUSTES = {
    4: 0.070909939706326, 6: 0.032100144773722, 10: 0.008446550928056, 33: 0.058724168688059,
    54: 0.007667080033571, 67: 0.009078059345484, 117: 0.009791937656701, 119: 0.014565368182957,
    121: 0.018591361120343, 127: 0.005197994410992, 129: 0.120625205338001, 132: 0.005560018587857,
    133: 0.05328618362546, 136: 0.066890455782413, 143: 0.014816547743976, 147: 0.014262833632529,
    198: 0.025462191551924, 205: 0.047252278774977, 263: 0.058724168688059, 284: 0.007667080033571,
    297: 0.009078059345484, 346: 0.009791937656701, 348: 0.014565368182957, 350: 0.018591361120343,
    356: 0.005197994410992, 358: 0.120625205338001, 361: 0.005560018587857, 362: 0.05328618362546,
    365: 0.066890455782413, 372: 0.014816547743976, 376: 0.014262833632529, 420: 0.025462191551924,
    425: 0.047252278774977,
}
BASIS = np.array(list(PROCRUSTES), np.int64)
BASIS_WEIGHTS = np.array(list(PROCRUSTES.values()))

# The 68 points of the iBUG 300-W layout (dlib, OpenFace), as mesh landmarks: jaw 0-16 from
# the subject's right ear to the left, brows 17-26, nose 27-35, eyes 36-47, lips 48-67.
IBUG68 = np.array([
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # right brow (outer->inner), left (inner->outer)
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose bridge top->tip, nostrils right->left
    33, 160, 158, 133, 153, 144,  # right eye: outer corner, upper lid, inner corner, lower lid
    362, 385, 387, 263, 373, 380,  # left eye: inner corner, upper lid, outer corner, lower lid
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips from the right corner
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips from the right corner
], np.int64)


@cache
def canonical_face() -> np.ndarray:
    """(468, 3) MediaPipe's canonical face (cm; x right, y up, z towards the viewer)."""
    with open(asset("canonical_face.obj"), encoding="ascii") as handle:
        rows = [line.split()[1:4] for line in handle if line.startswith("v ")]
    return np.asarray(rows, np.float64)


def face_frame(landmarks: np.ndarray) -> np.ndarray:
    """Frame-pixel landmarks (x right, y down, z away) -> x right, y up, z towards the camera."""
    return landmarks * np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Pose:
    scale: float  # frame pixels per canonical cm
    rotation: np.ndarray  # (3, 3) canonical face -> face frame
    translation: np.ndarray  # (3,) where the canonical origin lands, face frame

    @property
    def yaw_pitch(self) -> tuple[float, float]:
        """Degrees: yaw > 0 when the face turns towards the frame's right (the subject's left),
        pitch > 0 when it turns up. The rotation is taken apart as R = Rz(roll) Rx(-pitch)
        Ry(yaw): the turn in the image plane comes off first, so tilting the head (or the
        camera) sideways leaves yaw and pitch as they were."""
        r = self.rotation
        roll = np.arctan2(-r[0, 1], r[1, 1])
        c, s = np.cos(roll), np.sin(roll)
        upright = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]) @ r  # Rz(-roll) R
        yaw = np.arctan2(upright[0, 2], upright[0, 0])
        pitch = -np.arctan2(upright[2, 1], upright[1, 1])
        return float(np.degrees(yaw)), float(np.degrees(pitch))

    def normalise(self, points: np.ndarray) -> np.ndarray:
        """Face-frame points mapped back into the canonical face's frame (cm): pose removed."""
        return (points - self.translation) @ self.rotation / self.scale


def fit_pose(points: np.ndarray) -> Pose:
    """The similarity transform (scale s, rotation R, translation t) that best maps the canonical
    face onto face-frame `points` (468, 3): minimises sum_i w_i |s R c_i + t - p_i|^2 over the
    Procrustes basis (Umeyama, 1991, with weights)."""
    src, dst, w = canonical_face()[BASIS], points[BASIS], BASIS_WEIGHTS / BASIS_WEIGHTS.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a  # (3, 3)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection: flip the weakest axis
        d[2] = -1.0
    rotation = (u * d) @ vt
    var_s = w @ (a * a).sum(1)
    scale = float((sv * d).sum() / var_s)
    return Pose(scale=scale, rotation=rotation, translation=mu_d - scale * rotation @ mu_s)


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The subject's right and left eye centres (each the mean of its two corners)."""
    return points[list(RIGHT_EYE_CORNERS)].mean(0), points[list(LEFT_EYE_CORNERS)].mean(0)


def head_roll(landmarks: np.ndarray) -> float:
    """Degrees: the angle of the eye line (right eye centre to left eye centre) to the frame's
    horizontal, counter-clockwise on screen positive; frame-pixel landmarks."""
    right, left = eye_centres(landmarks[:, :2])
    dx, dy = left - right
    return float(np.degrees(np.arctan2(-dy, dx)))


EXPRESSION = ("mouth_open", "mouth_width", "lip_corner_left", "lip_corner_right",
              "eye_open_left", "eye_open_right", "brow_left", "brow_right")


def expression(face: np.ndarray) -> np.ndarray:
    """The EXPRESSION measures of a pose-normalised face (468, 3) (x right, y up), each divided
    by the inter-ocular distance. Left and right are the subject's.

    - mouth_open: the gap between the inner lips (landmarks 13 and 14; about 0.1 when closed).
    - mouth_width: between the mouth corners (61, 291).
    - lip_corner_left/right: the corner's height above the middle of the inner lips (negative
      below it; a smile raises it).
    - eye_open_left/right: the gap between the upper and lower lid (0 closed).
    - brow_left/right: the brow's mean height above its eye's centre.
    """
    right_eye, left_eye = eye_centres(face)
    iod = float(np.linalg.norm(left_eye - right_eye))
    if iod <= 0:
        return np.zeros(len(EXPRESSION))

    def gap(i: int, j: int) -> float:
        return float(np.linalg.norm(face[i] - face[j]))

    mouth_y = (face[INNER_LIPS[0], 1] + face[INNER_LIPS[1], 1]) / 2
    values = (
        gap(*INNER_LIPS),
        gap(*MOUTH_CORNERS),
        face[MOUTH_CORNERS[1], 1] - mouth_y,
        face[MOUTH_CORNERS[0], 1] - mouth_y,
        gap(*LEFT_EYE_LIDS),
        gap(*RIGHT_EYE_LIDS),
        face[list(LEFT_BROW), 1].mean() - left_eye[1],
        face[list(RIGHT_BROW), 1].mean() - right_eye[1],
    )
    return np.asarray(values, np.float64) / iod


def ibug68(face: np.ndarray) -> np.ndarray:
    """(68, 2) the iBUG points of a pose-normalised face, centred between the eye centres, in
    inter-ocular distances, x right and y down as in an upright frontal image."""
    right_eye, left_eye = eye_centres(face)
    iod = float(np.linalg.norm(left_eye - right_eye)) or 1.0
    points = (face[IBUG68, :2] - (right_eye + left_eye)[:2] / 2) / iod
    return points * np.array([1.0, -1.0])
