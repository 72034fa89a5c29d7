"""hse alone with the core: a tiny pipeline without episodes (the core's `pk` sampler, every
role 0) trains end to end, both HSE terms on the whole batch, and evaluates on z_G."""


def test_hse_trains_without_episodes_and_evaluates_the_global_embedding(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["data"]["train"][0]["categories"] = ["person", "vehicle"]
    config["backbone"]["name"] = "hse_vit"
    config["head"] = {"name": "hse"}
    config["losses"] = [{"name": "hse"}, {"name": "triplet"}]
    result = run_tiny_pipeline(config)
    assert "synthetic/mAP" in result.metrics and "synthetic/person/mAP" in result.metrics
    logged = (result.run_dir / "metrics.jsonl").read_text()
    assert '"hse/spec_train"' in logged and '"hse/glob_train"' in logged
    resolved = (result.run_dir / "pipeline.yaml").read_text()
    assert "hse_vit" in resolved
