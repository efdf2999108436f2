"""Feature extraction from raw video clips (the `video` extra: PyAV, openSMILE, librosa, OpenCV,
LiteRT).

These features are not the benchmark files' COVAREP / Facet / OpenFace features: a model
trained on them needs features extracted the same way (see docs/extraction.md).
"""

from .audio import AUDIO_SETS, DEFAULT_AUDIO_FEATURES, AudioFeatureSet, acoustic_frames, audio_set
from .clip import FLAGS, ClipFeatures, MediaFeatures, extract_clip, extract_media, write_clip
from .dataset import DatasetReport, extract_dataset, read_labels
from .visual import DEFAULT_VISUAL_FEATURES, VISION_FPS, VISUAL_SETS, VisualFeatureSet, visual_frames, visual_set

__all__ = [
    "AUDIO_SETS", "DEFAULT_AUDIO_FEATURES", "AudioFeatureSet", "acoustic_frames", "audio_set",
    "VISUAL_SETS", "DEFAULT_VISUAL_FEATURES", "VisualFeatureSet", "visual_frames", "visual_set", "VISION_FPS",
    "FLAGS", "ClipFeatures", "MediaFeatures", "DatasetReport",
    "extract_clip", "extract_media", "write_clip", "extract_dataset", "read_labels",
]
