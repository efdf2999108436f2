"""Names of the MMSA feature-file layout (SPEC 2), shared by every reader and writer."""

SPLITS = ("train", "valid", "test")
REQUIRED_KEYS = ("text_bert", "audio", "vision", "regression_labels")
UNIMODAL_KEYS = {"t": "regression_labels_T", "a": "regression_labels_A", "v": "regression_labels_V"}
LENGTH_KEYS = ("audio_lengths", "vision_lengths")
