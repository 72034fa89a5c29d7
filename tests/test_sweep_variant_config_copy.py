"""core.sweep.check_variants builds each variant from a copy of the config `plan` loaded
(its docstring: 'the variant's stays as loaded'): `--print-config` prints the variant's
config after the check, and a build that writes into the mapping it is given (a plugin
filling a nested default in place) must not change what is printed. The reference is a
fresh load of the pipeline with the variant's overrides."""

from __future__ import annotations

import copy

import yaml

from core import sweep
from core.testing import TINY_PIPELINE


def test_a_build_that_writes_into_its_config_leaves_the_variants_config_as_loaded(tmp_path, monkeypatch):
    import core.parameter_check as parameter_check

    config = copy.deepcopy(TINY_PIPELINE)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))

    def writing_check(cfg):
        cfg.data["trainer"]["log_every"] = 12345  # what an in-place default would do

    monkeypatch.setattr(parameter_check, "check_build", writing_check)
    variants = sweep.plan([path], [], ["losses.1.margin=0.3,0.5"], "0")
    sweep.check_variants(variants)
    for variant in variants:
        assert variant.config.data == sweep.load_pipeline(variant.pipeline, variant.overrides).data
