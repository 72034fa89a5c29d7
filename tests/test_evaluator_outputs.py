"""Evaluators that need more than embeddings (e.g. instruction embeddings for mAP-tau)
name model outputs in `outputs`; extraction keeps them, row-aligned, in FeatureSet.extras,
with the split's records beside them."""

import torch

from core.evaluation.reid import ReIDEvaluator
from core.interfaces import Evaluator

SEEN = []


class GlobalNormEvaluator(Evaluator):
    outputs = ("global",)

    def __init__(self):
        self.reid = ReIDEvaluator()

    def evaluate(self, query, gallery):
        SEEN.append((query, gallery))
        return self.reid.evaluate(query, gallery)


def test_extraction_keeps_the_outputs_an_evaluator_names(tiny_pipeline_config, run_tiny_pipeline, register_component):
    register_component("evaluator", "global_norm_test", GlobalNormEvaluator)
    config = tiny_pipeline_config
    config["evaluator"] = {"name": "global_norm_test"}
    config["trainer"]["eval_before"] = False
    SEEN.clear()
    result = run_tiny_pipeline(config)
    query, gallery = SEEN[-1]
    assert set(query.extras) == {"global"} and set(gallery.extras) == {"global"}
    assert query.extras["global"].shape == (len(query), query.extras["global"].shape[1])
    assert len(query.records) == len(query) and len(gallery.records) == len(gallery)
    assert [r.pid for r in query.records] == query.pids.tolist()
    # the bnneck head's embedding is BN(global): rows line up with the embeddings
    from core.runner import restore_run

    _, _, trainer = restore_run(result.run_dir)
    head = trainer.p.model.head.eval()
    assert torch.allclose(head.bn(query.extras["global"]), query.embeddings, atol=1e-5)
