"""Stand-ins for the core's network and Trainer, as the amsa memories (VPM-1, VPM-2) read
them: importable by the test modules as `amsa_stubs` (registered by conftest.py, since
pytest's importlib mode does not put this folder on sys.path)."""

import copy
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    """backbone + head, with `terms` holding the loss modules as the core's net does."""

    def __init__(self, backbone, head, terms=()):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.terms = [SimpleNamespace(module=m) for m in terms]


class StubTrainer:
    """The parts of the core Trainer the memories use: `extract` runs the given forward over
    `batches` and, with `eval_flip`, averages it with the forward of the mirrored images
    (images only, as the core's extract does)."""

    def __init__(self, net, batches, pids, eval_flip=False):
        self.net, self.batches = net, list(batches)
        self.cfg = SimpleNamespace(eval_flip=eval_flip)
        self.p = SimpleNamespace(train=SimpleNamespace(pids=np.asarray(pids)), train_datasets=[])

    def extract(self, table, datasets, outputs, forward):
        rows = {k: [] for k in ("embedding", *outputs)}
        for batch in self.batches:
            out = forward(batch)
            got = {k: out[k].float() for k in rows}
            if self.cfg.eval_flip:
                batch = copy.copy(batch)
                batch.images = batch.images.flip(-1)
                flipped = forward(batch)
                got = {k: (v + flipped[k].float()) / 2 for k, v in got.items()}
            for k, v in got.items():
                rows[k].append(v)
        return SimpleNamespace(extras={k: torch.cat(v) for k, v in rows.items() if k != "embedding"})
