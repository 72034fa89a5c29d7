"""What a plugin author meets between scaffold and ablation (issue 27): `core validate`
checks every stage's parameter patterns (on the meta device) with a did-you-mean that
knows loss parameters; a component swapped by name in a grid says which keys do not fit
and how to give the whole mapping; `--print-config --grid` prints every grid point;
a loss declares the output it reads; `BuildContext.from_table` sets the feature size;
`core plugins` notes a name two plugins share."""

import copy

import pytest
import torch
import yaml

from core.cli import main
from core.config.loading import ConfigError, load_pipeline
from core.config.validation import close_patterns, name_examples
from core.parameter_check import check_patterns_on_meta
from core.runner import validate
from core.testing import TINY_PIPELINE


@pytest.fixture
def center_yaml(tmp_path):
    """The tiny pipeline with the example plugin's center loss (a trainable table) third."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["losses"] = [{"name": "ce"}, {"name": "triplet"}, {"name": "example:center", "weight": 0.01}]
    config["stages"] = [{"name": "main", "epochs": 1, "param_groups": [{"params": ["losses.2.centers"],
                                                                       "lr_mult": 10}]},
                        {"name": "head-only", "epochs": 1, "trainable": ["head.*"]}]
    path = tmp_path / "center.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_validate_accepts_a_param_group_of_a_loss_parameter_checked_on_the_meta_device(center_yaml):
    summary = validate(center_yaml)
    assert summary["patterns_checked_on"] == "meta"
    assert summary["loss_inputs"] == {"ce": "logits", "triplet": "features", "center": "features"}


@pytest.mark.parametrize("override, key, close", [
    ("stages.0.param_groups.0.params=[losses.2.center]", "stages.0.param_groups.0.params.0", "'losses.2.centers'"),
    ("stages.1.trainable=[head.bnn.*]", "stages.1.trainable.0", "'head.bn.*'"),
    ("stages.0.frozen=[backbone.model.blocks.1.*]", "stages.0.frozen.0", "'backbone.model.blocks.0.*'"),
])
def test_a_pattern_of_any_stage_that_matches_nothing_is_an_error_with_did_you_mean(center_yaml, override, key, close):
    with pytest.raises(ConfigError) as err:
        validate(center_yaml, [override])
    message = str(err.value)
    assert message.startswith(f"{center_yaml.resolve()}: {key}:") or f": {key}:" in message
    assert f"Did you mean {close}" in message
    assert "losses.2.centers" in message  # what names look like, the loss's own parameter included


def test_a_param_group_of_parameters_the_stage_does_not_train_is_an_error(center_yaml):
    with pytest.raises(ConfigError, match="stages.1.param_groups.0.params.0: stage 'head-only': param_groups "
                                          "pattern 'backbone.\\*' matches only parameters this stage does not train"):
        validate(center_yaml, ["stages.1.param_groups=[{params: [backbone.*]}]"])


def test_the_meta_check_builds_no_real_weights_and_leaves_requires_grad_alone(center_yaml, monkeypatch):
    import core.parameter_check as validation

    seen = {}
    original = validation.check_parameter_patterns

    def spy(cfg, stages, stage_losses, module):
        seen["devices"] = {p.device.type for p in module.parameters()}
        flags = [p.requires_grad for p in module.parameters()]
        original(cfg, stages, stage_losses, module)
        seen["restored"] = flags == [p.requires_grad for p in module.parameters()]

    monkeypatch.setattr(validation, "check_parameter_patterns", spy)
    assert check_patterns_on_meta(load_pipeline(center_yaml))
    assert seen == {"devices": {"meta"}, "restored": True}


def test_the_pattern_miss_hint_of_the_trainer_lists_loss_parameters():
    names = [f"backbone.model.blocks.{i}.attn.qkv.weight" for i in range(12)] + \
            [f"head.part{i}.weight" for i in range(8)] + ["losses.2.centers", "losses.3.proxies"]
    shown = name_examples(names)
    assert "losses.2.centers" in shown and "losses.3.proxies" in shown
    assert close_patterns("losses.2.center", names)[0] == "losses.2.centers"


def test_swapping_a_component_by_name_says_which_keys_do_not_fit_and_gives_the_mapping(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PIPELINE))
    with pytest.raises(ConfigError) as err:
        validate(path, ["sampler.name=random"])
    message = str(err.value)
    assert "sampler.k: unknown key 'k' for sampler 'random'" in message
    assert "'sampler.name' was set to 'random' by --set/--grid, but 'k' comes from" in message
    assert "--set 'sampler={name: random, batch_size: 16}'" in message
    # the mapping it proposes builds
    assert validate(path, ["sampler={name: random, batch_size: 16}"])["components"]["sampler"]["name"] == "random"


def test_a_key_set_by_hand_for_the_wrong_component_gets_no_swap_hint(tmp_path):
    config = copy.deepcopy(TINY_PIPELINE)
    config["sampler"] = {"name": "random", "batch_size": 16, "k": 4}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:
        validate(path)
    assert "unknown key 'k'" in str(err.value) and "--set/--grid" not in str(err.value)


def test_print_config_with_a_grid_prints_every_grid_point(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PIPELINE))
    assert main(["run", str(path), "--print-config", "--grid", "sampler.k=2,4",
                 "--grid", "sampler={name: random, batch_size: 8},{name: pk, batch_size: 8, k: 2}",
                 "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    points = [yaml.safe_load(chunk.split("\n", 1)[1]) for chunk in out.split("# variant ")[1:]]
    assert len(points) == 4 and "# variant 4/4:" in out and "(seeds 0,1)" in out
    # a mapping given as a grid value replaces the pipeline's mapping; later axes win
    assert [p["sampler"] for p in points] == [{"name": "random", "batch_size": 8},
                                              {"name": "pk", "batch_size": 8, "k": 2}] * 2


def test_a_loss_declares_the_output_it_reads_with_features_by_default():
    from core.interfaces import Loss
    from core.losses.cross_entropy import CrossEntropyLoss

    class Plain(Loss):
        def forward(self, outputs, batch):
            return self.read_features(outputs).sum()

    class PostBN(Plain):
        features = "bn_features"

    outputs = {"features": torch.ones(2, 3), "bn_features": torch.zeros(2, 3)}
    assert Plain().features == "features" and float(Plain()(outputs, None)) == 6.0
    assert float(PostBN()(outputs, None)) == 0.0
    with pytest.raises(KeyError, match="loss PostBN reads the model output 'bn_features'.*outputs present: features"):
        PostBN()({"features": torch.ones(2, 3)}, None)
    assert CrossEntropyLoss().features == "logits"


def test_from_table_sets_the_feature_size_given_or_read_from_a_backbone(tiny_world):
    from core.context import BuildContext
    from core.data.table import RecordTable

    table = RecordTable.build([("w", tiny_world.records("train"))], relabel=True)
    assert BuildContext.from_table(table, feature_dim=32).feature_dim == 32

    class Backbone:
        feature_dim, patch_grid = 48, (4, 2)

    ctx = BuildContext.from_table(table, backbone=Backbone(), seed=3)
    assert (ctx.feature_dim, ctx.patch_grid, ctx.seed, ctx.num_identities) == (48, (4, 2), 3, table.num_identities)


def test_core_plugins_notes_a_name_two_plugins_share(register_component, capsys):
    register_component("loss", "center", object)
    assert main(["plugins"]) == 0
    assert "note: loss 'center' is registered by plugins example, test:loss:center; name it as example:center or " \
           "test:loss:center:center" in capsys.readouterr().out
