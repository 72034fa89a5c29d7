"""moil without episodes: a pipeline with a plain sampler fails naming `edps`.
(The pipeline with edps itself is a cross-plugin test: tests/test_mgor_pipeline.py.)"""

import pytest


def test_pipeline_with_a_non_episodic_sampler_fails_naming_edps(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config  # reid-core's tiny CPU pipeline: a `pk` sampler, no episodes
    config["losses"] = [{"name": "moil"}]
    config["trainer"]["eval_before"] = False
    with pytest.raises(Exception, match="`edps`") as info:  # the trainer may wrap it, naming the component
        run_tiny_pipeline(config)
    error = info.value if isinstance(info.value, ValueError) else info.value.__cause__
    assert isinstance(error, ValueError) and "needs episodes" in str(error)
