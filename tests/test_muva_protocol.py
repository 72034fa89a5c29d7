"""MUVA's evaluation protocols as pipelines (arXiv 2603.14012 Sec. 4.1, Tables 1-3): the
single-source legs (one source set, tested on each of the other three) and the
multi-source leave-one-out legs (three sources mixed, tested on the fourth), over
Market-1501 (MA), DukeMTMC-reID (D), MSMT17 (MS) and CUHK03-NP (C3). Each pipeline file
resolves to the protocol's sets and the paper's RMP heads (Sec. 4.2), validates on tiny
copies of the four datasets written here in their real layouts, and reports per target
set (cross-plugin: amsa + vge-labeler)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config.loading import load_pipeline
from core.runner import run, validate

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
SETS = {"ma": "market1501", "d": "dukemtmc", "ms": "msmt17", "c3": "cuhk03np"}
#: leg file -> (source sets, target sets), from the paper's Tables 1-3
LEGS = {**{f"muva_ss_{s}": ([s], [t for t in SETS if t != s]) for s in SETS},
        **{f"muva_loo_{t}": ([s for s in SETS if s != t], [t]) for t in SETS}}
TINY_CLIP = ("{embed_dim: 16, quick_gelu: true, vision_cfg: {layers: 1, width: 32, patch_size: 8, head_width: 16}, "
             "text_cfg: {context_length: 20, vocab_size: 49408, width: 16, heads: 2, layers: 1}}")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_datasets(root: Path) -> dict[str, Path]:
    """Four tiny datasets in their real layouts and naming: 4 training identities x 4
    images over 2 cameras; 2 test identities, each with a query in camera 1 and two gallery
    images in camera 2."""
    seed = iter(range(10_000))
    market = root / "market1501"
    for pid in range(1, 5):
        for i in range(4):
            _image(market / "bounding_box_train" / f"{pid:04d}_c{1 + i % 2}s1_{100 * i:06d}_01.jpg", next(seed))
    duke = root / "DukeMTMC-reID"
    for pid in range(1, 5):
        for i in range(4):
            _image(duke / "bounding_box_train" / f"{pid:04d}_c{1 + i % 2}_f{1000 + i:07d}.jpg", next(seed))
    cuhk = root / "cuhk03-np" / "detected"
    for pid in range(1, 5):
        for i in range(4):
            _image(cuhk / "bounding_box_train" / f"{pid:04d}_c{1 + i % 2}_{i + 1}.png", next(seed))
    for pid in (10, 11):
        _image(market / "query" / f"{pid:04d}_c1s1_000001_00.jpg", next(seed))
        _image(duke / "query" / f"{pid:04d}_c1_f0000001.jpg", next(seed))
        _image(cuhk / "query" / f"{pid:04d}_c1_1.png", next(seed))
        for i in range(2):
            _image(market / "bounding_box_test" / f"{pid:04d}_c2s1_{i:06d}_01.jpg", next(seed))
            _image(duke / "bounding_box_test" / f"{pid:04d}_c2_f{i:07d}.jpg", next(seed))
            _image(cuhk / "bounding_box_test" / f"{pid:04d}_c2_{i + 2}.png", next(seed))
    msmt = root / "MSMT17"  # the official release: list files, train/ and test/
    lists = {"list_train.txt": [], "list_val.txt": [], "list_query.txt": [], "list_gallery.txt": []}
    for pid in range(4):
        for i in range(4):
            name = f"{pid:04d}/{pid:04d}_{i:03d}_{1 + i % 2:02d}_0303morning_{i:04d}_0.jpg"
            lists["list_train.txt" if i < 3 else "list_val.txt"].append(f"{name} {pid}")
            _image(msmt / "train" / name, next(seed))
    for pid in (0, 1):
        name = f"{pid:04d}/{pid:04d}_000_01_0113morning_0001_0.jpg"
        lists["list_query.txt"].append(f"{name} {pid}")
        _image(msmt / "test" / name, next(seed))
        for i in range(2):
            name = f"{pid:04d}/{pid:04d}_{i + 1:03d}_02_0113noon_{i:04d}_0.jpg"
            lists["list_gallery.txt"].append(f"{name} {pid}")
            _image(msmt / "test" / name, next(seed))
    for list_name, lines in lists.items():
        (msmt / list_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"market1501": market, "dukemtmc": duke, "msmt17": msmt, "cuhk03np": root / "cuhk03-np"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("muva_sets"))


def tiny(path: Path, roots: dict[str, Path], out: Path) -> list[str]:
    """Overrides that point a leg at the tiny datasets, a tiny CLIP and a model-free
    grounder; everything else stays as the file has it."""
    data = load_pipeline(path).data["data"]
    roots_set = [f"data.{split}.{i}.root={roots[spec['dataset']]}"
                 for split in ("train", "test") for i, spec in enumerate(data[split])]
    return [*roots_set, "data.transform.size=[32, 16]", f"backbone.model_cfg={TINY_CLIP}",
            "backbone.pretrained=false", "prepare.0.grounder={name: stripes}", f"prepare.0.out={out}",
            "sampler.batch_size=8", "trainer.device=cpu", "trainer.num_workers=0", "trainer.progress=false"]


@pytest.mark.parametrize("leg", sorted(LEGS))
def test_each_leg_trains_on_its_sources_and_tests_on_its_targets_with_the_papers_heads(leg):
    sources, targets = LEGS[leg]
    cfg = load_pipeline(PIPELINES / f"{leg}.yaml").data
    assert [s["dataset"] for s in cfg["data"]["train"]] == [SETS[s] for s in sources]
    assert [s["dataset"] for s in cfg["data"]["test"]] == [SETS[t] for t in targets]
    # Sec. 4.2: 2 heads for single-source protocols except training on MS; 8 otherwise
    assert cfg["backbone"]["mask_heads"] == (2 if sources in (["ma"], ["d"], ["c3"]) else 8)
    base = load_pipeline(PIPELINES / "muva.yaml").data
    for key in ("stages", "losses", "head", "sampler", "evaluator"):
        assert cfg[key] == base[key], key  # the paper's setting, shared by every leg
    assert cfg["prepare"][0]["name"] == "vge" and cfg["prepare"][0]["grounder"]["name"] == "cogvlm"
    assert cfg["data"]["transform"] == base["data"]["transform"]


@pytest.mark.parametrize("leg", sorted(LEGS))
def test_each_leg_validates_on_tiny_copies_of_its_datasets(leg, datasets, tmp_path):
    summary = validate(PIPELINES / f"{leg}.yaml", tiny(PIPELINES / f"{leg}.yaml", datasets, tmp_path / "g.npz"))
    assert set(summary["losses"]) == {"muva_cmp"}  # stage 1 first
    assert summary["outputs"]["part_mask_logits"][1:] == [1, 3, 8]  # 1 block, 3 parts, 4 x 2 patches


@pytest.mark.parametrize("leg", ["muva_ss_ms", "muva_loo_c3"])
def test_a_leg_reports_every_target_set(leg, datasets, tmp_path):
    overrides = [*tiny(PIPELINES / f"{leg}.yaml", datasets, tmp_path / "g.npz"), "stages.0.epochs=1",
                 "stages.1.epochs=1", "stages.1.schedule.warmup_epochs=0", "stages.1.schedule.milestones=[1]",
                 "trainer.eval_every=0"]
    result = run(PIPELINES / f"{leg}.yaml", overrides, run_dir=tmp_path / "run")
    targets = [SETS[t] for t in LEGS[leg][1]]
    for target in targets:
        assert {f"{target}/mAP", f"{target}/rank-1"} <= set(result.metrics), target
    if len(targets) > 1:
        assert np.isclose(result.metrics["mean/mAP"], np.mean([result.metrics[f"{t}/mAP"] for t in targets]))
