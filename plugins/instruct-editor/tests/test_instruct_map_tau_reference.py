"""mAP-tau's positives come from a fixed reference, never from the evaluated model's own
(trainable) instruction encoder: ground-truth instruction ids, or a frozen copy of the
instruction encoder as built (METHODS.md "mAP-tau")."""

import numpy as np
import pytest
import torch

from core.interfaces import FeatureSet
from core.records import Record
from reid_instruct_editor.dataset import InstructDataset
from reid_instruct_editor.evaluator import InstructReIDEvaluator


def labelled(embeddings, pids, cams, ids, own):
    """Features whose records carry instruction ids; `own` is the model's own instruction
    embedding (what a model could move)."""
    records = [Record(path=None, pid=p, camid=c, extras={"instruction_id": i}) for p, c, i in zip(pids, cams, ids)]
    return FeatureSet(embeddings=torch.as_tensor(embeddings, dtype=torch.float32), pids=np.asarray(pids),
                      camids=np.asarray(cams), extras={"instruction_embedding": own}, records=records)


def test_labels_decide_positives_whatever_the_models_instruction_embeddings():
    # query: identity 1, outfit A; gallery ranked 1..4: (1, outfit B), (2, A), (1, A), (3, A)
    ids_g = ["A", "A", "A", "A"]
    ids_g[0] = "B"
    q_args = ([[0.0]], [1], [0], ["A"])
    g_args = ([[1.0], [2.0], [3.0], [4.0]], [1, 2, 1, 3], [1, 1, 1, 1], ids_g)
    evaluator = InstructReIDEvaluator(setting="task-free", metric="euclidean", ranks=[1])
    results = []
    for own_q, own_g in ((torch.ones(1, 4), torch.ones(4, 4)),            # the model says: all consistent
                         (torch.ones(1, 4), -torch.ones(4, 4))):          # the model says: none consistent
        results.append(evaluator.evaluate(labelled(*q_args, own_q), labelled(*g_args, own_g)))
    assert results[0] == results[1]
    m = results[0]
    assert m["tau_reference_labels"] == 1.0
    assert m["free/mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert m["free/mAP_tau"] == pytest.approx(100 * 1 / 3)  # the other outfit is a negative: one positive, rank 3
    with pytest.raises(ValueError, match="instruction_id"):
        q = labelled(*q_args, torch.ones(1, 4))
        q.records[0].extras.pop("instruction_id")
        InstructReIDEvaluator(reference="labels").evaluate(q, labelled(*g_args, torch.ones(4, 4)))


def test_a_model_that_changes_its_instruction_encoder_cannot_change_map_tau(editor, make_batch):
    """Train the instruction towers one step: the model's own instruction embeddings move,
    the reference embeddings (the frozen copy) do not, and mAP-tau (reference: encoder)
    is unchanged."""
    backbone, _ = editor
    texts = ["a red top", "a blue top", "a red top and black shoes", "ignore clothes", "a green coat", "a hat"]
    batch = make_batch(texts, pids=[0, 0, 0, 1, 1, 1])
    backbone.eval()
    before = backbone(batch)
    assert backbone.reference is not None and not any(p.requires_grad for p in backbone.reference.parameters())
    trainable = [p for p in backbone.instruction.parameters() if p.requires_grad]
    assert trainable, "the towers of this fixture are trainable"
    optimizer = torch.optim.SGD(trainable, lr=50.0)
    backbone.train()
    target = torch.randn(len(texts), backbone.embedding_dim, generator=torch.Generator().manual_seed(1))
    loss = -(backbone(batch)["instruction_embedding"] * target).sum()  # drag every instruction somewhere else
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    backbone.eval()
    after = backbone(batch)
    assert not torch.allclose(after["instruction_embedding"], before["instruction_embedding"], atol=1e-3)
    torch.testing.assert_close(after["reference_instruction_embedding"], before["reference_instruction_embedding"])

    def metrics(out, own):
        q = FeatureSet(embeddings=torch.zeros(3, 2), pids=np.array([0, 0, 1]), camids=np.zeros(3, int),
                       extras={"reference_instruction_embedding": out["reference_instruction_embedding"][[0, 1, 3]],
                               "instruction_embedding": own[[0, 1, 3]]})
        g = FeatureSet(embeddings=torch.arange(6.0)[:, None].repeat(1, 2), pids=np.array([0, 0, 0, 1, 1, 1]),
                       camids=np.ones(6, int),
                       extras={"reference_instruction_embedding": out["reference_instruction_embedding"],
                               "instruction_embedding": own})
        return InstructReIDEvaluator(setting="task-free", metric="euclidean", tau=0.5).evaluate(q, g)

    assert metrics(before, before["instruction_embedding"]) == metrics(after, after["instruction_embedding"])


def test_frozen_towers_are_their_own_reference(tiny, build_ctx, make_batch):
    from reid_instruct_editor.backbone import InstructEditor

    torch.manual_seed(0)
    ctx = build_ctx()
    backbone = InstructEditor(ctx, **tiny["vit"], clip_config=tiny["clip"]).eval()
    assert backbone.reference is None
    out = backbone(make_batch(["ignore clothes", "a red top"]))
    torch.testing.assert_close(out["reference_instruction_embedding"], out["instruction_embedding"])
    assert "reference_instruction_embedding" not in backbone.train()(make_batch(["ignore clothes", "a red top"]))


def test_the_world_gives_every_record_a_ground_truth_instruction_id(tiny):
    data = InstructDataset(world={**tiny["world"], "clothes_changes": 2, "captions": True, "infrared_cameras": [1]})
    for split in ("train", "query", "gallery"):
        for r in data.records(split):
            task, iid = r.extras["task"], r.extras["instruction_id"]
            if task in ("clothes-template", "language-instructed"):
                assert iid.startswith("outfit:"), (task, iid)
            elif task == "text-to-image" and r.extras["text_query"]:
                assert iid == f"text:{r.extras['instruction']}"
            else:
                assert iid == f"text:{data.variants[task][0]}", (task, iid)
    # a query's template shows the next outfit, and equals the gallery ids of that outfit's images
    query = [r for r in data.records("query") if r.extras["task"] == "clothes-template"][0]
    cat, identity, image, _ = query.extras["render_key"]
    world = data.world
    wanted = (world.outfit(image) + 1) % (world.clothes_changes + 1)
    assert query.extras["instruction_id"] == f"outfit:{cat}/{identity}/{wanted}"
