"""reid-moil: MGOR's Meta-Object Invariance Learning (CVPR 2026, Sec. 3.2) as a reid-core
loss (YAML name `moil`)."""
