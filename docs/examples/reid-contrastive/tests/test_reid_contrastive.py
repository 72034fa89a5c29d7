"""Tests of reid-contrastive, using reid-core's pytest fixtures (`tiny_pipeline_config`,
`run_tiny_pipeline`), which are active wherever reid-core is installed."""

import math

from core.registry import build_registry


def test_the_entry_point_registers_every_component():
    registry = build_registry()
    for kind, name in [("loss", "contrastive"), ("sampler", "camera-pk")]:
        entry = registry.get(kind, name)
        assert entry.provider == "contrastive", f"{kind} '{name}' comes from {entry.provider}"


def test_a_tiny_pipeline_trains_and_evaluates_with_the_components(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["sampler"] = {"name": "camera-pk", "batch_size": 16, "k": 4}
    config["losses"] = [{"name": "ce"}, {"name": "contrastive", "weight": 1.0}]
    result = run_tiny_pipeline(config)
    assert result.metrics, "the run produced no metrics"
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()


def test_the_loss_is_zero_for_perfect_embeddings():
    import torch

    from core.records import Batch
    from reid_contrastive.loss import ContrastiveLoss

    pids = torch.tensor([0, 0, 1, 1])
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])  # cosine distance 0 or 2
    zeros = torch.zeros(4, dtype=torch.long)
    batch = Batch(images=torch.zeros(4, 3, 2, 2), pids=pids, camids=zeros, categories=zeros, domains=zeros,
                  roles=zeros, indices=torch.arange(4))
    loss, parts = ContrastiveLoss(margin=0.5)({"features": features}, batch)
    assert float(loss) == 0.0 and float(parts["d_neg"]) == 2.0


def test_the_sampler_spreads_each_identity_over_its_cameras(tiny_world):
    from core.context import BuildContext
    from core.data.table import RecordTable
    from reid_contrastive.sampler import CameraPKSampler

    table = RecordTable.build([("world", tiny_world.records("train"))], relabel=True)
    sampler = CameraPKSampler(BuildContext.from_table(table), batch_size=8, k=4)
    for batch in sampler:
        assert len(batch) == 8
        for group in (batch[:4], batch[4:]):
            assert len(set(table.pids[group])) == 1  # one identity per group of K
            assert len(set(table.camids[group])) == 2  # both cameras of the tiny world
