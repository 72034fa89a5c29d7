"""The files `core new-plugin` writes, with `{{placeholders}}` (see `core.tools.scaffold`).

Kept as Python strings so they ship inside the wheel with no package-data entry.
"""

TEMPLATES: dict[str, str] = {}

TEMPLATES['README.md'] = r'''# {{dist}}

A plugin for reid-core (object re-identification). It provides:

{{kind_list}}

## Install and test

```bash
pip install -e ".[test]"    # the plugin, its entry point `reid_core: {{entry}}`, and pytest
core plugins                # lists {{entry}} with its components
pytest                      # each component's test, then the tiny pipeline trained with all of them (CPU)
```

## Use

Name the components in a pipeline YAML, e.g.:

```yaml
_base_: ../reid-core/pipelines/quickstart.yaml   # a pipeline to start from, relative to this file
{{yaml}}
```

or swap them into a grid next to reid-core's own (one comparison table):

```bash
{{grid}}
```

Each component's YAML keys are its constructor's parameters; `ctx` (the build context:
number of identities, feature size, image size, ...) is filled in by reid-core. If
another installed plugin registers one of these names too, write `{{entry}}:NAME`.

## Publish

`python -m build && twine upload dist/*`; users then `pip install {{dist}}` and
reid-core finds it. Keep the dependency on `reid-core` unpinned or loosely pinned.
'''

TEMPLATES['__init__.py'] = r'''"""{{dist}}: a reid-core plugin ({{summary}}). The components are registered
in `{{package}}.hooks`; nothing here imports torch, so `core --help` stays fast."""

__version__ = "0.1.0"
'''

TEMPLATES['backbone.py'] = r'''"""Backbone '{{name}}': a small convolutional network, images -> "global" (B, D).

A backbone returns a dict that always holds "global" (B, D) with D == `feature_dim`; it
may add "tokens" (B, N, D), part tokens, or "part_masks" (B, P, N) over `patch_grid`
(what `core explain` draws). Replace the layers with your method's.
"""

import torch
from torch import nn

from core.interfaces import Backbone


class {{class}}(Backbone):
    """Args (YAML keys): dim, the feature size."""

    def __init__(self, ctx, dim: int = 64) -> None:
        super().__init__()
        self.feature_dim = int(dim)
        self.patch_grid = None  # a token model sets (rows, cols) of its patches
        self.layers = nn.Sequential(
            nn.Conv2d(3, dim // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dim // 2), nn.ReLU(inplace=True),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return {"global": self.layers(batch.images)}
'''

TEMPLATES['dataset.py'] = r'''"""Dataset '{{name}}': a tiny in-memory world of coloured identities, to show the
contract. A real reader lists image files: `Record(path=..., pid=..., camid=...)`,
and the default `load_image` decodes them (delete the one below). A reader for a
folder of your own, and the protocol its records must follow (a match must come from
another camera; queries not in the gallery): reid-core's docs/writing-plugins.md,
section 9 -- or no code at all, with the `folder` layout or a manifest.

Listing must not decode images: samplers and evaluators read identities and cameras
from the records alone.
"""

import colorsys

from PIL import Image, ImageDraw

from core.interfaces import Dataset
from core.records import Record


class {{class}}(Dataset):
    """Args (YAML keys): identities (train; half as many more for query/gallery),
    images_per_identity, cameras."""

    def __init__(self, identities: int = 8, images_per_identity: int = 4, cameras: int = 2) -> None:
        if identities < 2 or cameras < 2:
            raise ValueError("dataset '{{name}}': needs at least 2 identities and 2 cameras")
        self.identities, self.images, self.cameras = identities, images_per_identity, cameras

    def records(self, split):
        if split == "train":
            pids = range(self.identities)
        else:  # query and gallery share identities never seen in training
            pids = range(self.identities, self.identities + max(self.identities // 2, 2))
        out = []
        for pid in pids:
            for n in range(self.images):
                camid = n % self.cameras
                if split == "query" and n != 0 or split == "gallery" and n == 0:
                    continue
                out.append(Record(path=None, pid=pid, camid=camid, category="blob", domain="{{name}}",
                                  split=split, extras={"_shot": n}))
        return out

    def load_image(self, record):
        hue = (record.pid * 0.618) % 1.0
        light = 0.35 + 0.25 * record.camid / max(self.cameras - 1, 1)
        colour = tuple(int(255 * c) for c in colorsys.hls_to_rgb(hue, light, 0.8))
        image = Image.new("RGB", (16, 32), (90, 90, 90))
        shift = record.extras.get("_shot", 0) % 3
        ImageDraw.Draw(image).rectangle([3 + shift, 4, 12, 28], fill=colour)
        return image
'''

TEMPLATES['evaluator.py'] = r'''"""Evaluator '{{name}}': rank-1 accuracy of nearest-neighbour retrieval under cosine
distance, dropping gallery items with the query's identity and camera (the ReID
protocol). The built-in `reid` evaluator reports CMC, mAP and mINP; an evaluator returns
a flat dict of floats (percentages where the field reports percentages).
"""

import torch
import torch.nn.functional as F

from core.interfaces import Evaluator


class {{class}}(Evaluator):
    def evaluate(self, query, gallery):
        q = F.normalize(query.embeddings.float(), dim=1)
        g = F.normalize(gallery.embeddings.float().to(q.device), dim=1)
        distance = 1.0 - q @ g.T
        q_pids, g_pids = torch.as_tensor(query.pids), torch.as_tensor(gallery.pids)
        q_cams, g_cams = torch.as_tensor(query.camids), torch.as_tensor(gallery.camids)
        junk = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])
        distance = distance.cpu().masked_fill(junk, float("inf"))
        nearest = distance.argmin(dim=1)
        valid = ((q_pids[:, None] == g_pids[None, :]) & ~junk).any(dim=1)
        hits = (g_pids[nearest] == q_pids) & valid
        return {"rank-1": 100.0 * float(hits.sum()) / max(int(valid.sum()), 1),
                "num_valid_queries": float(valid.sum())}

    def ranked_gallery(self, query, gallery):
        """Which gallery items `evaluate` ranks for each query: `core search --worst`, and
        `core search` / `core explain` on a run's own splits, rank what this says, so that
        their per-query APs and pictures are evaluation's. None (the base class's default)
        means the standard protocol: every item but those of the query's identity on its
        own camera, which is what `evaluate` above ranks.

        Implement it when `evaluate` ranks something other than the standard protocol (a
        gallery per task, a clothes rule, no camera rule): return a
        core.interfaces.RankedGallery whose `ranked(rows)` gives, for an int array of query
        rows, a (len(rows), G) bool array, True where `evaluate` ranks gallery item j;
        read metadata only (pids, camids, records: the tools pass empty embeddings), and
        build it from the same function `evaluate` uses (docs/writing-plugins.md, "What
        your evaluator ranks"). The generated test checks that the two agree.
        """
        return None
'''

TEMPLATES['head.py'] = r'''"""Head '{{name}}': backbone "global" -> a linear projection as the retrieval
"embedding", plus "features" (the output losses read unless they declare another,
`Loss.features`) and, in training, "logits" over the training identities (for `ce`).
Evaluation uses "embedding" only.
"""

import torch
from torch import nn

from core.interfaces import Head


class {{class}}(Head):
    """Args (YAML keys): dim, the embedding size (0: the backbone's feature size)."""

    def __init__(self, ctx, dim: int = 0) -> None:
        super().__init__()
        if not ctx.feature_dim:
            raise ValueError("head '{{name}}' needs the backbone's feature size (ctx.feature_dim)")
        dim = dim or ctx.feature_dim
        self.project = nn.Linear(ctx.feature_dim, dim)
        self.classifier = nn.Linear(dim, ctx.num_identities, bias=False) if ctx.num_identities else None

    def forward(self, features, batch) -> dict[str, torch.Tensor]:
        embedding = self.project(features["global"])
        out = {"features": embedding, "embedding": embedding}
        if self.training and self.classifier is not None:
            out["logits"] = self.classifier(embedding)
        return out
'''

TEMPLATES['hooks.py'] = r'''"""Hook implementations: reid-core calls these to learn what this plugin provides.

Targets are lazy "module:Class" strings, so `core plugins` and `core --help` never
import torch or this plugin's modules; a component's module is imported when a pipeline
builds it.
"""

from core.hookspecs import hookimpl


{{registrations}}
'''

TEMPLATES['loss.py'] = r'''"""Loss '{{name}}': the contrastive loss of Hadsell et al. 2006 ("Dimensionality Reduction
by Learning an Invariant Mapping", Eq. 4) on the batch's cosine distances instead of the
paper's Euclidean ones, and without its factors 1/2 (twice the paper's value; the YAML
`weight` can take the 1/2):

    L = mean over pairs i != j of  y_ij d_ij^2 + (1 - y_ij) max(0, m - d_ij)^2

with y_ij = 1 for two images of one identity. Replace the formula with your method's,
and cite its paper and equation here.
"""

import torch
import torch.nn.functional as F

from core.interfaces import Loss


class {{class}}(Loss):
    """Args (YAML keys): margin m in (0, 2]; features: the model output the loss reads
    (`Loss.features`): "features" (`bnneck`'s pre-BN feature, the default) or
    "bn_features" (post-BN) — compare both with
    `--grid losses.1.features=features,bn_features`. The loss weight is the YAML `weight`
    key, handled by reid-core. A parameter held here (`nn.Parameter`, e.g. a table of
    class centres) trains with the model, named `losses.<i>.<param>` in stage patterns."""

    def __init__(self, margin: float = 0.5, features: str = "features") -> None:
        super().__init__()
        if not 0.0 < margin <= 2.0:
            raise ValueError(f"loss '{{name}}': margin must be in (0, 2] for cosine distances, got {margin}")
        self.margin, self.features = float(margin), features

    def forward(self, outputs, batch):
        x = self.read_features(outputs).float()
        x = F.normalize(x, dim=1)
        d = (1.0 - x @ x.T).clamp(min=0.0)
        same = batch.pids[:, None] == batch.pids[None, :]
        off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        positive = same & off_diagonal
        negative = ~same
        per_pair = torch.where(positive, d.pow(2), (self.margin - d).clamp(min=0).pow(2))
        mask = (positive | negative).float()
        loss = (per_pair * mask).sum() / mask.sum().clamp(min=1.0)
        # the first value: a 0-dim tensor the trainer backpropagates (never float(...) or
        # .item(): a Python number has no gradient); the second: parts logged to metrics.jsonl
        return loss, {"d_pos": (d * positive).sum() / positive.sum().clamp(min=1),
                      "d_neg": (d * negative).sum() / negative.sum().clamp(min=1)}
'''

TEMPLATES['pyproject.toml'] = r'''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{{dist}}"
version = "0.1.0"
description = "A reid-core plugin: {{summary}}."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["reid-core"]

# `pip install -e ".[test]"` installs the test runner with the plugin
[project.optional-dependencies]
test = ["pytest>=8"]

# reid-core finds the plugin through this entry point: the module holding the hooks.
[project.entry-points.reid_core]
{{entry}} = "{{package}}.hooks"

[tool.setuptools]
packages = ["{{package}}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra --import-mode=importlib"
'''

TEMPLATES['sampler.py'] = r'''"""Sampler '{{name}}': batches of P identities x K images, the K images of an identity
drawn from as many different cameras as it has (cross-camera positives make the
triplet and contrastive losses learn camera invariance).

The plan depends only on (seed, epoch), so a resumed run replays it; under DDP every
rank plans the same global batches and keeps its own identity groups (`shard_plan`).
"""

from collections import defaultdict

import numpy as np

from core.interfaces import Sampler
from core.samplers.sharding import shard_plan


class {{class}}(Sampler):
    """Args (YAML keys): batch_size (global, a multiple of k), k images per identity."""

    def __init__(self, ctx, batch_size: int = 32, k: int = 4) -> None:
        if k < 1 or batch_size % k:
            raise ValueError(f"sampler '{{name}}': batch_size ({batch_size}) must be a multiple of k ({k})")
        if ctx.train is None or len(ctx.train) == 0:
            raise ValueError("sampler '{{name}}' needs the training record table (data.train)")
        self.k, self.p = k, batch_size // k
        self.seed, self.rank, self.world_size = ctx.seed, ctx.rank, ctx.world_size
        self.epoch_batches = getattr(ctx, "epoch_batches", None)
        # per identity, per camera: record indices (read from the table, no image decoded)
        self.by_identity = defaultdict(lambda: defaultdict(list))
        for index, (pid, cam) in enumerate(zip(ctx.train.pids.tolist(), ctx.train.camids.tolist())):
            self.by_identity[pid][cam].append(index)
        self.identities = sorted(self.by_identity)
        if len(self.identities) < self.p:
            raise ValueError(f"sampler '{{name}}': a batch needs {self.p} identities, the data has "
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
'''


# --- tests: one file per component, and one that trains the tiny pipeline with all ---------

TEMPLATES['test_pipeline.py'] = r'''"""{{dist}} in a pipeline: reid-core's pytest fixtures (`tiny_pipeline_config`,
`run_tiny_pipeline`, active wherever reid-core is installed) train and evaluate the tiny
synthetic-world pipeline with this plugin's components in it."""

import math


def test_a_tiny_pipeline_trains_and_evaluates_with_the_components(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
{{configure}}
    result = run_tiny_pipeline(config)
    assert result.metrics, "the run produced no metrics"
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()
'''

TEMPLATES['test_loss.py'] = r'''"""Loss '{{name}}' against its formula (Hadsell et al. 2006, Eq. 4, on cosine
distances and without its factors 1/2, until you replace it: then test your paper's
equation on a hand-computed case)."""

import pytest
import torch

from core.records import Batch
from core.registry import build_registry
from {{package}}.{{module}} import {{class}}


def batch_of(pids):
    pids = torch.tensor(pids)
    zeros = torch.zeros_like(pids)
    return Batch(images=torch.zeros(len(pids), 3, 2, 2), pids=pids, camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(len(pids)))


def test_the_plugin_registers_the_loss():
    assert build_registry().get("loss", "{{entry}}:{{name}}").load() is {{class}}


def test_the_loss_is_zero_for_perfect_embeddings():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])  # cosine distance 0 or 2
    loss, parts = {{class}}(margin=0.5)({"features": features}, batch_of([0, 0, 1, 1]))
    assert float(loss) == 0.0 and float(parts["d_neg"]) == 2.0


def test_the_loss_is_the_formula_on_a_hand_computed_case_and_trains_the_features():
    # cosine distances: d01 = 1 (positive pair), d02 = 0 and d12 = 1 (negative pairs);
    # ordered pairs: 2 x 1^2 + 2 x max(0, 0.5 - 0)^2 + 2 x max(0, 0.5 - 1)^2 = 2.5 over 6 pairs
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    loss, _ = {{class}}(margin=0.5)({"features": features}, batch_of([0, 0, 1]))
    assert float(loss.detach()) == pytest.approx(2.5 / 6)
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_the_loss_returns_a_tensor_the_trainer_can_backpropagate():
    """The contract, whatever the formula: keep this test when you replace the others."""
    features = torch.randn(4, 8, requires_grad=True)
    out = {{class}}()({"features": features}, batch_of([0, 0, 1, 1]))
    value = out[0] if isinstance(out, tuple) else out
    assert torch.is_tensor(value) and value.dim() == 0, (
        f"forward must return a 0-dim torch tensor (or (tensor, parts)), not {type(value).__name__}: "
        "float(...) and .item() give a number without a gradient")
    assert value.requires_grad, "the loss has no gradient: a .detach() or a float() inside forward cut it"


def test_the_loss_reads_the_feature_it_declares():
    loss = {{class}}(features="bn_features")
    assert loss.features == "bn_features"
    with pytest.raises(KeyError, match="bn_features"):
        loss({"features": torch.zeros(4, 2)}, batch_of([0, 0, 1, 1]))
'''

TEMPLATES['test_sampler.py'] = r'''"""Sampler '{{name}}': P identities x K images per batch, each identity spread over its
cameras, and a plan that depends only on (seed, epoch)."""

from core.context import BuildContext
from core.data.table import RecordTable
from core.registry import build_registry
from {{package}}.{{module}} import {{class}}


def table_of(world):
    return RecordTable.build([("world", world.records("train"))], relabel=True)


def test_the_plugin_registers_the_sampler():
    assert build_registry().get("sampler", "{{entry}}:{{name}}").load() is {{class}}


def test_each_batch_is_p_identities_of_k_images_over_both_cameras(tiny_world):
    table = table_of(tiny_world)
    sampler = {{class}}(BuildContext.from_table(table), batch_size=8, k=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 8
        for group in (batch[:4], batch[4:]):
            assert len(set(table.pids[group])) == 1  # one identity per group of K
            assert len(set(table.camids[group])) == 2  # both cameras of the tiny world


def test_the_plan_depends_only_on_seed_and_epoch(tiny_world):
    table = table_of(tiny_world)
    make = lambda seed: {{class}}(BuildContext.from_table(table, seed=seed), batch_size=8, k=4)  # noqa: E731
    assert make(0).plan(3) == make(0).plan(3)
    assert make(0).plan(3) != make(0).plan(4) or make(0).plan(3) != make(1).plan(3)
'''

TEMPLATES['test_backbone.py'] = r'''"""Backbone '{{name}}': images -> "global" (B, feature_dim)."""

import torch

from core.context import BuildContext
from core.records import Batch
from core.registry import build_registry
from {{package}}.{{module}} import {{class}}


def test_the_plugin_registers_the_backbone():
    assert build_registry().get("backbone", "{{entry}}:{{name}}").load() is {{class}}


def test_it_returns_global_features_of_its_declared_size():
    backbone = {{class}}(BuildContext(image_size=(32, 16)), dim=16)
    zeros = torch.zeros(4, dtype=torch.long)
    batch = Batch(images=torch.randn(4, 3, 32, 16), pids=zeros, camids=zeros, categories=zeros, domains=zeros,
                  roles=zeros, indices=torch.arange(4))
    out = backbone(batch)
    assert backbone.feature_dim == 16 and out["global"].shape == (4, 16)
    out["global"].sum().backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)
'''

TEMPLATES['test_head.py'] = r'''"""Head '{{name}}': "global" -> "embedding" (+ "logits" over the training identities in
training). `BuildContext.from_table(table, feature_dim=...)` stands in for the backbone."""

import torch

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Batch
from core.registry import build_registry
from {{package}}.{{module}} import {{class}}


def test_the_plugin_registers_the_head():
    assert build_registry().get("head", "{{entry}}:{{name}}").load() is {{class}}


def test_it_embeds_and_classifies_in_training_only(tiny_world):
    table = RecordTable.build([("world", tiny_world.records("train"))], relabel=True)
    ctx = BuildContext.from_table(table, feature_dim=8)
    head = {{class}}(ctx)
    zeros = torch.zeros(4, dtype=torch.long)
    batch = Batch(images=torch.zeros(4, 3, 2, 2), pids=zeros, camids=zeros, categories=zeros, domains=zeros,
                  roles=zeros, indices=torch.arange(4))
    out = head.train()({"global": torch.randn(4, 8)}, batch)
    assert out["embedding"].shape == (4, 8) and out["logits"].shape == (4, ctx.num_identities)
    assert "logits" not in head.eval()({"global": torch.randn(4, 8)}, batch)
'''

TEMPLATES['test_dataset.py'] = r'''"""Dataset '{{name}}': records per split without decoding images; query and gallery share
identities never seen in training; every query has a gallery match on another camera."""

from core.registry import build_registry
from {{package}}.{{module}} import {{class}}


def test_the_plugin_registers_the_dataset():
    assert build_registry().get("dataset", "{{entry}}:{{name}}").load() is {{class}}


def test_the_splits_follow_the_reid_protocol():
    data = {{class}}(identities=4, images_per_identity=4, cameras=2)
    train = {r.pid for r in data.records("train")}
    query, gallery = data.records("query"), data.records("gallery")
    assert train and not train & {r.pid for r in query + gallery}
    for q in query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in gallery)
    image = data.load_image(query[0])
    assert image.mode == "RGB" and image.size == (16, 32)
'''

TEMPLATES['test_evaluator.py'] = r'''"""Evaluator '{{name}}': rank-1 under the ReID protocol (same identity and camera dropped)."""

import numpy as np
import pytest
import torch

from core.interfaces import FeatureSet
from core.registry import build_registry
from {{package}}.{{module}} import {{class}}


def test_the_plugin_registers_the_evaluator():
    assert build_registry().get("evaluator", "{{entry}}:{{name}}").load() is {{class}}


def test_rank1_on_a_hand_made_gallery():
    query = FeatureSet(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), pids=np.array([0, 1]), camids=np.array([0, 0]))
    # query 0's nearest gallery item is its own identity on its own camera (dropped), then identity 1;
    # query 1's nearest is its identity on camera 1: rank-1 = 50%
    gallery = FeatureSet(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]),
                         pids=np.array([0, 1, 1, 0]), camids=np.array([0, 1, 1, 1]))
    metrics = {{class}}().evaluate(query, gallery)
    assert metrics["rank-1"] == pytest.approx(50.0) and metrics["num_valid_queries"] == 2


def test_the_tools_rank_what_evaluate_ranks():
    """`core search --worst` and `core explain` rank each query against the gallery items of
    `ranked_gallery` (None: the standard protocol): rank-1 over that mask is evaluate's.
    Change evaluate's rule and this fails until ranked_gallery says the same."""
    from core.tools.ranked_items import evaluator_protocol

    rng = np.random.default_rng(0)
    query = FeatureSet(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)),
                       pids=rng.integers(0, 4, 12), camids=rng.integers(0, 3, 12))
    gallery = FeatureSet(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)),
                         pids=rng.integers(0, 4, 40), camids=rng.integers(0, 3, 40))
    evaluator = {{class}}()
    ranked = torch.as_tensor(evaluator_protocol(evaluator, query, gallery).ranked(np.arange(12)))
    q = torch.nn.functional.normalize(query.embeddings, dim=1)
    g = torch.nn.functional.normalize(gallery.embeddings, dim=1)
    nearest = (1.0 - q @ g.T).masked_fill(~ranked, float("inf")).argmin(dim=1)
    positive = (torch.as_tensor(query.pids)[:, None] == torch.as_tensor(gallery.pids)[None, :]) & ranked
    valid = positive.any(dim=1)
    hits = positive[torch.arange(12), nearest] & valid
    assert evaluator.evaluate(query, gallery)["rank-1"] == pytest.approx(100.0 * float(hits.sum()) / int(valid.sum()))
'''
