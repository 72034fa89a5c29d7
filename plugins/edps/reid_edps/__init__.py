"""reid-edps: MGOR's Episodic Distribution Perturbation Sampling (CVPR 2026, Sec. 3.1) as a
reid-core sampler (YAML name `edps`)."""
