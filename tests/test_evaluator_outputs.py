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


def test_extract_takes_other_outputs_and_another_forward(tiny_pipeline_config, run_tiny_pipeline):
    from core.runner import restore_run

    result = run_tiny_pipeline(tiny_pipeline_config)
    _, _, trainer = restore_run(result.run_dir)
    test = trainer.p.test_sets[0]
    plain = trainer.extract(test.query, test.datasets, outputs=("global", "features"))
    assert set(plain.extras) == {"global", "features"}
    doubled = trainer.extract(test.query, test.datasets, outputs=(),
                              forward=lambda batch: {"embedding": 2 * trainer.p.model(batch)["embedding"]})
    assert doubled.extras == {} and torch.allclose(doubled.embeddings, 2 * plain.embeddings, atol=1e-5)


def test_a_stage_without_forward_calls_the_losses_with_empty_outputs(tiny_pipeline_config, run_tiny_pipeline,
                                                                     register_component):
    from core.interfaces import Loss

    seen = []

    class CountsOutputs(Loss):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, outputs, batch):
            seen.append(sorted(outputs))
            return (self.w - batch.pids.float().mean()) ** 2

    register_component("loss", "counts_outputs_test", CountsOutputs)
    config = tiny_pipeline_config
    config["trainer"]["eval_before"] = False
    config["stages"] = [{"name": "memory", "epochs": 1, "forward": False, "trainable": ["losses.*"],
                         "losses": [{"name": "counts_outputs_test"}], "optimizer": {"name": "adam", "lr": 0.1}},
                        {"name": "main", "epochs": 1, "optimizer": {"name": "adam", "lr": 1e-3}}]
    run_tiny_pipeline(config)
    assert seen and all(keys == [] for keys in seen)
