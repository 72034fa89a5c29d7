"""reid-vge-labeler: MUVA's part pseudo-labels from a visual grounding model (grounders,
calibration, patch-mask voting) as a reid-core labeler (`vge`)."""
