"""AnimateDiff in pure torch (no ComfyUI): the motion module (`model`), file-format detection (`formats`), SparseCtrl's
encoder (`sparse_controlnet`), FreeInit's filters (`free_init`) and prompt schedules (`prompt_schedule`)."""
