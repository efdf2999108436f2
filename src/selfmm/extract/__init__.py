"""Feature extraction from raw video clips (the `video` extra: PyAV, openSMILE, librosa, OpenCV).

These features are not the benchmark files' COVAREP / Facet / OpenFace features: a model
trained on them needs features extracted the same way (see docs/extraction.md).
"""

from .audio import AUDIO_SETS, DEFAULT_AUDIO_FEATURES, AudioFeatureSet, acoustic_frames, audio_set
from .clip import FLAGS, ClipFeatures, MediaFeatures, extract_clip, extract_media, write_clip
from .dataset import DatasetReport, extract_dataset, read_labels
from .visual import VISION_DIM, VISION_FEATURES, VISION_FPS

__all__ = [
    "AUDIO_SETS", "DEFAULT_AUDIO_FEATURES", "AudioFeatureSet", "acoustic_frames", "audio_set",
    "VISION_DIM", "VISION_FEATURES", "VISION_FPS",
    "FLAGS", "ClipFeatures", "MediaFeatures", "DatasetReport",
    "extract_clip", "extract_media", "write_clip", "extract_dataset", "read_labels",
]
