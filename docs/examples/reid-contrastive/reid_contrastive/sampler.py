"""Sampler 'camera-pk': batches of P identities x K images, the K images of an identity
drawn from as many different cameras as it has (cross-camera positives make the
triplet and contrastive losses learn camera invariance).

The plan depends only on (seed, epoch), so a resumed run replays it; under DDP every
rank plans the same global batches and keeps its own identity groups (`shard_plan`).
"""

from collections import defaultdict

import numpy as np

from core.interfaces import Sampler
from core.samplers.sharding import shard_plan


class CameraPKSampler(Sampler):
    """Args (YAML keys): batch_size (global, a multiple of k), k images per identity."""

    def __init__(self, ctx, batch_size: int = 32, k: int = 4) -> None:
        if k < 1 or batch_size % k:
            raise ValueError(f"sampler 'camera-pk': batch_size ({batch_size}) must be a multiple of k ({k})")
        if ctx.train is None or len(ctx.train) == 0:
            raise ValueError("sampler 'camera-pk' needs the training record table (data.train)")
        self.k, self.p = k, batch_size // k
        self.seed, self.rank, self.world_size = ctx.seed, ctx.rank, ctx.world_size
        self.epoch_batches = getattr(ctx, "epoch_batches", None)
        # per identity, per camera: record indices (read from the table, no image decoded)
        self.by_identity = defaultdict(lambda: defaultdict(list))
        for index, (pid, cam) in enumerate(zip(ctx.train.pids.tolist(), ctx.train.camids.tolist())):
            self.by_identity[pid][cam].append(index)
        self.identities = sorted(self.by_identity)
        if len(self.identities) < self.p:
            raise ValueError(f"sampler 'camera-pk': a batch needs {self.p} identities, the data has "
                             f"{len(self.identities)}")

    def _group(self, pid, rng):
        """K indices of one identity, cycling over its cameras (shuffled) so that the
        group spans as many cameras as possible."""
        cameras = [rng.permutation(v).tolist() for v in self.by_identity[pid].values()]
        rng.shuffle(cameras)
        group, turn = [], 0
        while len(group) < self.k:
            pool = cameras[turn % len(cameras)]
            group.append(pool[(turn // len(cameras)) % len(pool)])
            turn += 1
        return group

    def plan(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        while len(batches) < len(self):  # passes over the shuffled identities
            order = rng.permutation(self.identities).tolist()
            for start in range(0, len(order) - self.p + 1, self.p):
                batches.append([i for pid in order[start:start + self.p] for i in self._group(pid, rng)])
        return batches[: len(self)]

    def __iter__(self):
        yield from shard_plan(self.plan(self.epoch), self.rank, self.world_size, self.k)

    def __len__(self):
        # the core's epoch length (ctx.epoch_batches, the same for every sampler) when in a
        # pipeline, so that this sampler's rows of an ablation train as many steps as `pk`'s
        return self.epoch_batches or len(self.identities) // self.p
