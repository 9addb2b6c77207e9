"""AnimateDiff motion modules in pure torch: the model (`model`) and file-format detection (`formats`)."""
