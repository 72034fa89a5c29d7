"""Pipeline YAML: inheritance, overrides, merge rules, and validation errors that name the
file, the key path and the valid keys."""

import copy
from pathlib import Path

import pytest
import yaml

from core.config.loading import ConfigError, load_pipeline
from core.config.validation import check_type, validate_params


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_base_inheritance_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path / "base.yaml", {"sampler": {"name": "pk", "batch_size": 64, "k": 4},
                                   "losses": [{"name": "ce"}, {"name": "triplet"}]})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "sampler": {"k": 8},
                                            "losses": [{"name": "ce"}]})
    cfg = load_pipeline(child)
    assert cfg.data["sampler"] == {"name": "pk", "batch_size": 64, "k": 8}
    assert cfg.data["losses"] == [{"name": "ce"}]
    assert "_base_" not in cfg.data


def test_delete_replaces_a_mapping_instead_of_merging(tmp_path):
    write(tmp_path / "base.yaml", {"backbone": {"name": "timm", "arch": "vit_base_patch16_224"}})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "backbone": {"_delete_": True, "name": "other"}})
    assert load_pipeline(child).data["backbone"] == {"name": "other"}


def test_multiple_bases_merge_in_order(tmp_path):
    write(tmp_path / "a.yaml", {"trainer": {"amp": "none", "eval_every": 1}})
    write(tmp_path / "b.yaml", {"trainer": {"eval_every": 5}})
    child = write(tmp_path / "c.yaml", {"_base_": ["a.yaml", "b.yaml"]})
    assert load_pipeline(child).data["trainer"] == {"amp": "none", "eval_every": 5}


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_pipeline(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    child = write(tmp_path / "child.yaml", {"_base_": "nope.yaml"})
    with pytest.raises(ConfigError) as err:
        load_pipeline(child)
    assert "child.yaml" in str(err.value) and "nope.yaml" in str(err.value)


def test_set_overrides_parse_yaml_values_and_index_lists(tmp_path):
    path = write(tmp_path / "p.yaml", {"losses": [{"name": "ce"}, {"name": "triplet", "margin": 0.3}],
                                       "stages": [{"epochs": 1}]})
    cfg = load_pipeline(path, ["losses.1.margin=0.5", "stages.0.epochs=3", "trainer.amp=none",
                               "data.transform.size=[64, 32]"])
    assert cfg.data["losses"][1]["margin"] == 0.5
    assert cfg.data["stages"][0]["epochs"] == 3
    assert cfg.data["trainer"] == {"amp": "none"}
    assert cfg.data["data"]["transform"]["size"] == [64, 32]
    assert cfg.origin("losses.1.margin") == "--set"


def test_set_with_out_of_range_index_lists_the_valid_range(tmp_path):
    path = write(tmp_path / "p.yaml", {"losses": [{"name": "ce"}]})
    with pytest.raises(ConfigError, match=r"'3' is out of range: 'losses' is a list of 1 items \(0..0\)"):
        load_pipeline(path, ["losses.3.weight=1"])


def test_set_of_an_item_of_a_list_the_pipeline_has_not_says_to_set_the_list(tmp_path):
    """`--set data.test.0.dataset=x` where the pipeline has no data.test made a mapping
    {'0': {...}}, then told as the pipeline file's 'data.test.0: missing 'dataset''."""
    path = write(tmp_path / "p.yaml", {"data": {"train": [{"dataset": "synthetic"}]}})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, ["data.test.0.dataset=market1501"])
    assert str(caught.value) == ("--set: data.test: 'data.test' is not in the pipeline, so it has no item 0; "
                                 "set the whole list, e.g. --set 'data.test=[...]'")


def test_set_of_an_item_of_a_misspelt_list_suggests_the_list_the_pipeline_has(tmp_path):
    """`--set stage.0.epochs=1` told the user to create a list 'stage' (`--set 'stage=[...]'`),
    which the schema then refuses; the pipeline's own `stages` is what was meant."""
    path = write(tmp_path / "p.yaml", {"stages": [{"epochs": 5}], "losses": [{"name": "ce"}]})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, ["stage.0.epochs=1"])
    assert str(caught.value) == ("--set: stage: 'stage' is not in the pipeline, so it has no item 0. "
                                 "Did you mean 'stages.0.epochs'? (the pipeline's keys here: losses, stages)")


def test_set_messages_say_what_is_wrong_on_one_line(tmp_path):
    """A name where a list index belongs is not "out of range"; the `--set` prefix appears
    once; a value that is not YAML says where in the value, on the line the CLI shows."""
    path = write(tmp_path / "p.yaml", {"losses": [{"name": "ce"}, {"name": "triplet"}]})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, ["losses.x.weight=1"])
    assert str(caught.value) == "--set: losses.x: 'x' is not a list index: 'losses' is a list of 2 items (0..1)"
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, ["sampler.batch_size"])
    assert str(caught.value) == "--set: expects key.path=value, got 'sampler.batch_size'"
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, ["sampler={"])
    text = str(caught.value)
    assert text.startswith("--set: sampler: the value is not valid YAML: line 1, column 2: ")
    assert "\n" not in text


def test_origin_names_the_file_that_set_the_key(tmp_path):
    write(tmp_path / "base.yaml", {"sampler": {"name": "pk", "k": 4}})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "sampler": {"batch_size": 32}})
    cfg = load_pipeline(child)
    assert cfg.origin("sampler.k") == str((tmp_path / "base.yaml").resolve())
    assert cfg.origin("sampler.batch_size") == str(child.resolve())


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "sampler: {name: pk\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_pipeline(path)


def test_invalid_yaml_says_where_on_one_line(tmp_path):
    """The CLI shows an error's first line: the parser's position must be on it (it was on
    the third). Line 3, column 1: where the unclosed list of line 2 meets the next key."""
    path = write(tmp_path / "bad.yaml", "name: x\nlosses: [{name: ce}\nsampler: {name: pk}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    text = str(caught.value)
    assert "\n" not in text and "line 3, column 1" in text and "while parsing a flow sequence" in text


class Thing:
    def __init__(self, ctx, margin: float | None = 0.3, k: int = 4, mode: str = "hard",
                 sizes: list[int] = (1, 2), required: bool = None) -> None:  # noqa: RUF013
        pass


class Needs:
    def __init__(self, arch: str) -> None:
        pass


@pytest.fixture
def cfg(tmp_path):
    return load_pipeline(write(tmp_path / "p.yaml", {"loss": {"name": "thing"}}))


def test_unknown_key_gets_did_you_mean_and_valid_keys(cfg):
    with pytest.raises(ConfigError) as err:
        validate_params(Thing, {"margn": 0.2}, cfg, "losses.0", "loss 'thing'")
    msg = str(err.value)
    assert "p.yaml: losses.0.margn" in msg and "Did you mean 'margin'" in msg
    assert "Valid keys: margin, k, mode, sizes, required" in msg


def test_wrong_type_names_expected_and_given(cfg):
    with pytest.raises(ConfigError, match=r"losses.0.k: wrong type .* expected int, got 'four' \(str\)"):
        validate_params(Thing, {"k": "four"}, cfg, "losses.0", "loss 'thing'")
    with pytest.raises(ConfigError, match="expected list\\[int\\]"):
        validate_params(Thing, {"sizes": [1, "x"]}, cfg, "losses.0", "loss 'thing'")


def test_missing_required_value(cfg):
    with pytest.raises(ConfigError, match=r"backbone.arch: missing value: backbone 'x' needs 'arch' \(str\)"):
        validate_params(Needs, {}, cfg, "backbone", "backbone 'x'")


@pytest.mark.parametrize("value,hint,ok", [
    (1, float, True), (True, int, False), (True, float, False), (None, float | None, True),
    ([1, 2], list[int], True), ([1, 2.5], list[int], False), ({"a": 1}, dict[str, int], True),
    ("x", int | str, True), ([64, 32], tuple[int, int], True), ([64], tuple[int, int], False),
])
def test_check_type(value, hint, ok):
    assert check_type(value, hint) is ok


def test_a_test_set_is_named_by_its_name_key_and_a_bad_name_is_refused(tmp_path, tiny_pipeline_config):
    from core.pipeline import build_pipeline

    world = dict(tiny_pipeline_config["data"]["train"][0])
    tiny_pipeline_config["data"]["test"] = [{**world, "name": "people"}, {**world, "seed": 1}, {**world, "seed": 2}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline_config))
    p = build_pipeline(load_pipeline(path))
    assert [t.name for t in p.test_sets] == ["people", "synthetic#1", "synthetic#2"]
    with pytest.raises(ConfigError, match=r"data.test.0.name: a set's name is a non-empty string without '/'"):
        build_pipeline(load_pipeline(path, ["data.test.0.name=a/b"]))


@pytest.mark.parametrize("override, expected", [
    ("trainer.num_workers=-1",
     r"--set: trainer.num_workers: expected an int >= 0 \(0: load in the main process\), got -1"),
    ("trainer.batch_size_eval=0", r"--set: trainer.batch_size_eval: expected an int >= 1, got 0")])
def test_a_trainer_count_out_of_range_names_its_key(tmp_path, tiny_pipeline_config, override, expected):
    """Refused at build, naming the key (they were torch's DataLoader words, 'num_workers
    option should be non-negative', exit 1, at the first batch or evaluation)."""
    from core.pipeline import build_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline_config))
    with pytest.raises(ConfigError, match=expected):
        build_pipeline(load_pipeline(path, [override]))


@pytest.mark.parametrize("name, cuda, expected", [
    ("gpu", 0, "trainer.device: 'gpu' is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("cuda:3", 2, "trainer.device: device 'cuda:3' asked for, but this machine has 2 CUDA device(s) "
                  "(cuda:0..cuda:1)")])
def test_a_device_name_torch_refuses_or_a_gpu_the_machine_has_not_names_the_key(monkeypatch, name, cuda,
                                                                                 expected):
    """'gpu' was torch's RuntimeError listing twenty device types, exit 1; cuda:3 on a
    two-GPU machine failed at the first tensor moved there."""
    import torch

    from core.pipeline import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    with pytest.raises(ConfigError) as caught:
        resolve_device(name)
    assert str(caught.value) == expected


def test_a_misspelt_component_name_key_and_data_key_get_a_suggestion(tmp_path, tiny_pipeline_config):
    """`{datset: folder}` was 'missing 'dataset'' and `data.trian` 'unknown key' with no hint,
    where every other misspelt key gets one (a newcomer's walk met both)."""
    from core.pipeline import build_pipeline

    config = copy.deepcopy(tiny_pipeline_config)
    config["data"]["train"][0]["datset"] = config["data"]["train"][0].pop("dataset")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"data.train.0: missing 'dataset': which component to use "
                                          r"\(is 'datset' a misspelling of 'dataset'\?\)"):
        build_pipeline(load_pipeline(path))
    config = copy.deepcopy(tiny_pipeline_config)
    config["data"]["trian"] = config["data"].pop("train")
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"data.trian: unknown key; Did you mean 'train'\? valid keys: train, "):
        build_pipeline(load_pipeline(path))
    config = copy.deepcopy(tiny_pipeline_config)
    config["head"] = {"kind": "bnneck"}  # nothing like 'name': no guess
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        build_pipeline(load_pipeline(path))
    assert str(caught.value).endswith("head: missing 'name': which component to use"), str(caught.value)
