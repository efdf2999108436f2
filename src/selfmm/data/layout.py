"""Names of the MMSA feature-file layout (SPEC 2), shared by every reader and writer."""

SPLITS = ("train", "valid", "test")
REQUIRED_KEYS = ("text_bert", "audio", "vision", "regression_labels")
UNIMODAL_KEYS = {"t": "regression_labels_T", "a": "regression_labels_A", "v": "regression_labels_V"}
LENGTH_KEYS = ("audio_lengths", "vision_lengths")
# A top-level key beside the splits in files made by `selfmm extract`/`extract-dataset`:
# {"audio_features": set name, "visual_features": set name}. MMSA's loader reads only the
# splits, so it ignores this key.
EXTRACTION_KEY = "extraction"
UNKNOWN_FEATURES = "unknown"  # the set of a file that records none (benchmark files)
# The visual set of selfmm files (and runs) from before the visual set was recorded: the only one.
LEGACY_VISUAL_FEATURES = "haar"
