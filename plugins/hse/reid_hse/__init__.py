"""reid-hse: MGOR's Hierarchical Semantic Equilibrium (CVPR 2026, Sec. 3.3) for reid-core."""
