"""The names `train` and `pack` offer, importable without torch (the modules that implement them need it)."""

DATASETS = ("fashion", "deepfashion", "both")
RECIPES = ("classifier", "metric", "suffix", "bn-adapt")
LOSS_NAMES = ("proxy-anchor", "normalized-softmax")  # the keys of losses.LOSSES
