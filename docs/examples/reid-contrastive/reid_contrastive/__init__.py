"""reid-contrastive: a reid-core plugin (sampler, loss 'contrastive'). The components are registered
in `reid_contrastive.hooks`; nothing here imports torch, so `core --help` stays fast."""

__version__ = "0.1.0"
