"""Cross-plugin integration of MGOR end to end (edps + moil + hse; the `all` environment):
pipelines/mgor.yaml (the paper's setting, real data: checked up to the data),
pipelines/mgor_synthetic.yaml (its CPU twin, run tiny end to end) and the ablation
pipelines/mgor_ablation/ (three pipelines on one base)."""

from pathlib import Path

from core.config.loading import load_pipeline
from core.config.validation import validate_params
from core.registry import build_registry
from core.runner import run, validate

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
ABLATION = PIPELINES / "mgor_ablation"

#: Two seen categories of 8 identities + one unseen, a 1-layer ViT, one short epoch.
TINY = ["data.train.0.categories=[person, ship, object]", "data.train.0.held_out_categories=[object]",
        "data.train.0.identities=8", "data.train.0.test_identities=4", "data.train.0.images_per_identity=4",
        "data.train.0.cameras=2", "data.train.0.render_size=[32, 16]",
        "data.transform.size=[32, 16]", "data.transform.pad=2", "sampler.batch_size=16",
        "backbone.model_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "stages.0.epochs=1", "stages.0.schedule.warmup_epochs=0", "trainer.eval_every=0",
        "trainer.progress=false", "trainer.num_workers=0", "trainer.device=cpu", "trainer.amp=none"]
TINY_TEST = ("data.test=[{dataset: synthetic, categories: [person, ship], identities: 8, test_identities: 4, "
             "images_per_identity: 4, cameras: 2, render_size: [32, 16]}, {dataset: synthetic, categories: [object], "
             "identities: 8, test_identities: 4, images_per_identity: 4, cameras: 2, render_size: [32, 16]}]")


def check_components(path: Path) -> None:
    """Every component's keys against its constructor (what `core run` checks before
    building), without building anything: the datasets need not exist."""
    cfg = load_pipeline(path)
    registry = build_registry()
    sections = [("sampler", "sampler", cfg.data["sampler"]), ("backbone", "backbone", cfg.data["backbone"]),
                ("head", "head", cfg.data["head"]), ("evaluator", "evaluator", cfg.data["evaluator"])]
    sections += [("loss", f"losses.{i}", spec) for i, spec in enumerate(cfg.data["losses"])]
    for kind, key, spec in sections:
        params = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        target = registry.get(kind, spec["name"]).load()
        validate_params(target, params, cfg, key, f"{kind} '{spec['name']}'", injected=("ctx",))
    for i, spec in enumerate(cfg.data["data"]["train"] + cfg.data["data"]["test"]):
        target = registry.get("dataset", spec["dataset"]).load()
        validate_params(target, {k: v for k, v in spec.items() if k != "dataset"}, cfg, f"data.{i}", "dataset")


def test_mgor_yaml_is_the_papers_setting():
    data = load_pipeline(PIPELINES / "mgor.yaml").data
    train = data["data"]["train"]
    # 5 training sets, 5 categories: Market-1501, VeRi, VesselReID, iPanda-50, ATRW
    assert [s["dataset"] for s in train] == ["market1501", "veri776", "manifest", "ipanda50", "atrw"]
    assert "VesselReID" in train[2]["path"]
    tests = data["data"]["test"]
    assert [s["dataset"] for s in tests] == ["msmt17", "manifest", "manifest", "manifest", "university1652",
                                             "petface", "elpephants"]
    assert [s.get("path", "").split("/")[1] for s in tests[1:4]] == ["UAV-VeID", "Wildlife71", "CUTE"]
    assert tests[4]["query"] == "satellite" and tests[4]["gallery"] == "drone"  # satellite -> UAV
    assert data["data"]["transform"] == {"size": [256, 256], "pad": 10, "flip": 0.5, "erasing": 0.0, "norm": "half"}
    assert data["sampler"] == {"name": "edps", "batch_size": 64, "k": 4, "disjoint_p": 0.5, "categories_per_batch": 4}
    assert data["backbone"]["name"] == "hse_vit"
    assert data["backbone"]["arch"] == "vit_base_patch16_224.augreg_in1k"  # ImageNet-1k only, explicit tag
    assert data["backbone"]["pretrained"] is True
    assert data["head"] == {"name": "hse"}
    assert [loss["name"] for loss in data["losses"]] == ["moil", "hse"]
    assert data["losses"][1]["global_weight"] == 0.0  # l_glob is moil's L_id: not counted twice
    (stage,) = data["stages"]
    assert stage["epochs"] == 60
    assert stage["optimizer"] == {"name": "sgd", "lr": 1.0e-3, "weight_decay": 1.0e-4, "momentum": 0.9}


def test_mgor_yaml_losses_are_methods_md_moil_and_hse():
    """METHODS.md, MOIL: L_id^train + L_met^train (margin 0.3) + L_id^test + lambda L_pair,
    lambda = 1.0; HSE adds l_spec on meta-train (l_glob is moil's L_id)."""
    moil, hse = load_pipeline(PIPELINES / "mgor.yaml").data["losses"]
    assert moil == {"name": "moil", "id_train_weight": 1.0, "metric_weight": 1.0, "id_test_weight": 1.0,
                    "pair_weight": 1.0, "margin": 0.3, "label_smoothing": 0.1}
    assert hse == {"name": "hse", "global_weight": 0.0, "local_weight": 1.0, "label_smoothing": 0.1}


def test_mgor_yaml_normalisation_matches_the_pretrained_tag():
    from timm.models import get_pretrained_cfg

    from core.data.transforms import NORMS

    data = load_pipeline(PIPELINES / "mgor.yaml").data
    cfg = get_pretrained_cfg(data["backbone"]["arch"])
    assert NORMS[data["data"]["transform"]["norm"]] == (tuple(cfg.mean), tuple(cfg.std))


def test_mgor_yaml_components_validate_up_to_the_data():
    check_components(PIPELINES / "mgor.yaml")


def test_mgor_yaml_backbone_is_vit_b16_on_a_16x16_grid():
    from core.context import BuildContext
    from reid_hse.backbone import DualTokenViT

    spec = load_pipeline(PIPELINES / "mgor.yaml").data["backbone"]
    ctx = BuildContext(image_size=(256, 256))
    backbone = DualTokenViT(ctx, arch=spec["arch"], pretrained=False)  # no weights here
    assert backbone.patch_grid == (16, 16) and backbone.feature_dim == 768


def test_synthetic_twin_builds_and_steps_with_all_three_plugins():
    summary = validate(PIPELINES / "mgor_synthetic.yaml", ["trainer.device=cpu", "trainer.amp=none"])
    components = summary["components"]
    assert components["sampler"]["plugin"] == "edps"
    assert components["backbone"]["plugin"] == "hse" and components["head"]["plugin"] == "hse"
    assert components["losses.0"]["plugin"] == "moil" and components["losses.1"]["plugin"] == "hse"
    assert summary["train"]["categories"] == {"animal": 100, "person": 100, "ship": 100, "vehicle": 100}
    assert set(summary["test"]) == {"synthetic#0", "synthetic#1"}
    assert summary["outputs"]["embedding"] == [64, 128] and summary["outputs"]["local_logits"] == [64, 100]
    assert not summary["parameters_without_grad"]


def test_mgor_runs_end_to_end_on_the_cpu_with_seen_and_unseen_test_sets(tmp_path):
    result = run(PIPELINES / "mgor_synthetic.yaml", [*TINY, TINY_TEST], run_dir=tmp_path / "run")
    for key in ("synthetic#0/mAP", "synthetic#1/mAP", "synthetic#1/mINP", "synthetic#0/person/rank-1"):
        assert key in result.metrics, key
    logged = (result.run_dir / "metrics.jsonl").read_text()
    for term in ("moil/id_train", "moil/id_test", "moil/pair", "hse/spec_train", "hse/glob_test"):
        assert f'"{term}"' in logged


def test_ablation_pipelines_share_one_base_and_differ_only_in_the_method():
    rows = {name: load_pipeline(ABLATION / f"{name}.yaml").data for name in ("baseline", "edps_moil", "full")}
    shared = ("data", "evaluator", "stages", "trainer", "seed")
    for name, data in rows.items():
        for key in shared:
            assert data[key] == rows["baseline"][key], (name, key)
        assert data["name"] == name
        assert data["backbone"]["model_kwargs"] == rows["baseline"]["backbone"]["model_kwargs"]
    assert rows["baseline"]["sampler"]["name"] == "pk" and rows["baseline"]["head"] == {"name": "bnneck"}
    assert [x["name"] for x in rows["baseline"]["losses"]] == ["ce", "triplet"]
    assert rows["edps_moil"]["sampler"]["name"] == "edps" and [x["name"] for x in rows["edps_moil"]["losses"]] == ["moil"]
    assert rows["full"]["sampler"] == rows["edps_moil"]["sampler"]
    assert rows["full"]["backbone"]["name"] == "hse_vit" and rows["full"]["head"] == {"name": "hse"}
    assert [x["name"] for x in rows["full"]["losses"]] == ["moil", "hse"]
    test_sets = rows["baseline"]["data"]["test"]
    assert test_sets[0]["categories"] == [c for c in rows["baseline"]["data"]["train"][0]["categories"]
                                          if c not in rows["baseline"]["data"]["train"][0]["held_out_categories"]]
    assert test_sets[1]["categories"] == rows["baseline"]["data"]["train"][0]["held_out_categories"]


ROWS = ("baseline", "pk_ce2", "edps_plain", "edps_moil_nopair", "edps_moil_p0", "edps_moil", "edps_moil_p1", "full")


def test_ablation_pipelines_validate():
    for name in ROWS:
        check_components(ABLATION / f"{name}.yaml")


def test_ablation_controls_differ_from_their_row_in_one_thing_only():
    rows = {name: load_pipeline(ABLATION / f"{name}.yaml").data for name in ROWS}
    for name, data in rows.items():
        for key in ("data", "evaluator", "stages", "trainer", "seed"):
            assert data[key] == rows["baseline"][key], (name, key)
    ce2 = rows["pk_ce2"]["losses"]
    assert ce2[0]["name"] == "ce" and ce2[0]["weight"] == 2.0 and ce2[1] == rows["baseline"]["losses"][1]
    assert rows["edps_plain"]["sampler"] == rows["edps_moil"]["sampler"]
    assert rows["edps_plain"]["losses"] == rows["baseline"]["losses"]
    assert rows["edps_moil_nopair"]["losses"][0]["pair_weight"] == 0.0
    for p, name in ((0.0, "edps_moil_p0"), (0.5, "edps_moil"), (1.0, "edps_moil_p1")):
        assert rows[name]["sampler"] == {**rows["edps_moil"]["sampler"], "disjoint_p": p}
        assert rows[name]["losses"] == rows["edps_moil"]["losses"]
    for name in ROWS[2:]:  # the same budget as the PK rows: 20 batches per epoch
        assert rows[name]["sampler"]["batches_per_epoch"] == 20
