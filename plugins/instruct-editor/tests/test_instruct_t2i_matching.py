"""The text-to-image matching branch (`t2i_matching`): BERT-style fusion encoder, p-ITM on
hard negatives never of the same identity, BERT masking and MLM (the authors' L_pitm, L_mlm)."""

import math

import pytest
import torch

from core.pipeline import ReIDModel
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.t2i_matching import FusionLayer, T2IMatchingLoss, hard_negatives, mask_tokens


def mean_cross_entropy(rows: list[list[float]], labels: list[int]) -> float:
    """mean_i -log softmax(rows[i])[labels[i]], by hand in Python floats (log-sum-exp
    shifted by the row's maximum)."""
    total = 0.0
    for row, label in zip(rows, labels):
        top = max(row)
        total += -(row[label] - top - math.log(sum(math.exp(v - top) for v in row)))
    return total / len(rows)


def test_hard_negatives_never_pick_the_same_identity_and_follow_the_softmax():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    sim = torch.randn(6, 6, generator=g) * 2
    same = ids[:, None] == ids[None, :]
    counts = torch.zeros(6, 6)
    for _ in range(4000):
        picks = hard_negatives(sim, same, generator=g)
        assert not same[torch.arange(6), picks].any()
        counts[torch.arange(6), picks] += 1
    expect = torch.softmax(sim, dim=1).masked_fill(same, 0)
    expect = expect / expect.sum(dim=1, keepdim=True)
    assert torch.allclose(counts / 4000, expect, atol=0.03)
    only = torch.tensor([[True, False, True], [False, True, True]])  # one other identity per row
    for _ in range(50):
        assert hard_negatives(torch.randn(2, 3, generator=g) * 5, only, generator=g).tolist() == [1, 0]


def test_bert_masking_rates():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 1000, (400, 50), generator=g)
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -5:] = False
    masked, chosen = mask_tokens(tokens, maskable, mask_id=5000, vocab=(1, 1000), probability=0.15, generator=g)
    assert not chosen[~maskable].any() and torch.equal(masked[~chosen], tokens[~chosen])
    assert abs(chosen.sum().item() / maskable.sum().item() - 0.15) < 0.01
    n = chosen.sum().item()
    as_mask = (masked[chosen] == 5000).sum().item() / n
    kept = (masked[chosen] == tokens[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # ~10 % random (a few equal by chance)


def manual_attention(mha, q, kv, pad=None):
    """Multi-head attention from the module's weights, one head at a time."""
    d = q.shape[-1]
    h = mha.num_heads
    wq, wk, wv = mha.in_proj_weight.split(d)
    bq, bk, bv = mha.in_proj_bias.split(d)
    Q, K, V = q @ wq.t() + bq, kv @ wk.t() + bk, kv @ wv.t() + bv
    outs = []
    for i in range(h):
        s = slice(i * d // h, (i + 1) * d // h)
        scores = Q[..., s] @ K[..., s].transpose(-1, -2) / math.sqrt(d // h)
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, :], float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ V[..., s])
    return mha.out_proj(torch.cat(outs, dim=-1))


def test_fusion_layer_is_self_attention_then_cross_attention_then_feed_forward():
    torch.manual_seed(2)
    layer = FusionLayer(8, 2, dropout=0.0).eval()
    text, image = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, 3:] = False
    n0, n1, n2 = layer.norms
    h = n0(text + manual_attention(layer.self_attn, text, text, ~valid))
    h = n1(h + manual_attention(layer.cross_attn, h, image))
    expect = n2(h + layer.ffn(h))
    torch.testing.assert_close(layer(text, valid, image), expect, atol=1e-5, rtol=1e-5)


@pytest.fixture
def matched(editor):
    """A tiny model in training mode, its matching loss (bound) and a text-to-image batch:
    images of people 0, 1, 2 and a caption of each."""
    backbone, ctx = editor
    torch.manual_seed(3)
    model = ReIDModel(backbone, InstructHead(ctx, classifier=False)).train()
    loss = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.0, momentum=None).train()  # plain MLM, no m-RTD
    loss.bind(model)
    return model, loss, ctx


def t2i_batch(make_batch):
    captions = ["a man in a red coat and blue jeans", "a woman with a black bag and white shoes",
                "a child wearing a green shirt"]
    batch = make_batch(["retrieve the described person"] * 3 + captions, pids=[0, 1, 2, 0, 1, 2],
                       text_query=[False] * 3 + [True] * 3)
    batch.extras["task"] = ["text-to-image"] * 6
    return batch


def test_pitm_equals_a_hand_computation(matched, make_batch):
    """With two identities each caption has one candidate negative image and each image one
    candidate negative caption: the pairs and labels are known."""
    model, loss, ctx = matched
    batch = t2i_batch(make_batch).select(torch.tensor([True, True, False, True, True, False]))
    out = model(batch)
    value = loss.itm_loss(out["embedding"], out["instruction_tokens"], out["instruction_valid"].bool(),
                          out["image_tokens"], loss.host_pairs(out, batch), batch.host("pids"))
    # rows: images 0 (pid 0), 1 (pid 1); captions 2 (pid 0), 3 (pid 1)
    pairs = [(2, 0, 1), (3, 1, 1), (2, 1, 0), (3, 0, 0), (3, 0, 0), (2, 1, 0)]
    assert math.isclose(float(value.detach()), pitm_by_hand(loss, out, pairs), rel_tol=1e-4)


def pitm_by_hand(loss, out, pairs):
    """Mean cross-entropy of the matching head over (caption row, image row, label)."""
    logits = [loss.match_logits(out["instruction_tokens"][t:t + 1], out["instruction_valid"][t:t + 1].bool(),
                                out["image_tokens"][i:i + 1])[0].tolist() for t, i, _ in pairs]
    return mean_cross_entropy(logits, [label for _, _, label in pairs])


def test_pitm_leaves_out_a_pair_without_another_identity(matched, make_batch):
    """Images of people 0 and 1, two captions of person 0: each caption's negative image is
    person 1's; no caption of another person exists, so the paired image (person 0's) gets
    no negative caption: that pair is left out, never drawn from the image's own identity."""
    model, loss, _ = matched
    batch = make_batch(["retrieve the described person"] * 2 + ["a man in a red coat", "a man with a cap"],
                       pids=[0, 1, 0, 0], text_query=[False, False, True, True])
    batch.extras["task"] = ["text-to-image"] * 4
    out = model(batch)
    caps, imgs, _, _ = loss.host_pairs(out, batch)
    assert caps.tolist() == [2, 3] and imgs.tolist() == [0, 0]
    value = loss.itm_loss(out["embedding"], out["instruction_tokens"], out["instruction_valid"].bool(),
                          out["image_tokens"], loss.host_pairs(out, batch), batch.host("pids"))
    pairs = [(2, 0, 1), (3, 0, 1), (2, 1, 0), (3, 1, 0)]
    assert math.isclose(float(value.detach()), pitm_by_hand(loss, out, pairs), rel_tol=1e-4)


def test_mlm_predicts_the_original_tokens_at_the_chosen_positions(matched, make_batch):
    model, loss, ctx = matched
    batch = t2i_batch(make_batch)
    out = model(batch)
    caps, imgs, _, _ = loss.pairs(out, batch)
    assert caps.tolist() == [3, 4, 5] and imgs.tolist() == [0, 1, 2]
    loss.mlm_probability = 0.5  # more chosen tokens on three short captions
    torch.manual_seed(7)
    value = loss.mlm_loss(batch, caps, imgs, out["image_tokens"])
    # by hand: the same draws, the caption re-encoded, fused with its image, decoded
    enc = model.backbone.instruction
    tokens = enc.tokenize([batch.extras["instruction"][int(r)] for r in caps], out["image_tokens"].device)
    eot = tokens.argmax(dim=1)
    pos = torch.arange(tokens.shape[1])[None, :]
    torch.manual_seed(7)
    masked, chosen = mask_tokens(tokens, (pos > 0) & (pos < eot[:, None]), int(tokens[0, 0]), (1, int(tokens[0, 0])),
                                 probability=0.5)
    assert chosen.any() and not chosen[:, 0].any() and not chosen[torch.arange(3), eot].any()
    _, states, valid = enc.encode_text(masked)
    fused = loss.fusion(model.backbone.text_tokens(states), valid, out["image_tokens"][imgs])
    logits = loss.mlm_decoder(loss.mlm_transform(fused[chosen]))
    expect = mean_cross_entropy(logits.tolist(), tokens[chosen].tolist())
    assert math.isclose(float(value.detach()), expect, rel_tol=1e-4)


def test_gradients_reach_the_fusion_heads_and_both_encoders(matched, make_batch):
    model, loss, ctx = matched
    batch = t2i_batch(make_batch)
    out = model(batch)
    torch.manual_seed(0)
    value, parts = loss(out, batch)
    assert set(parts) == {"pitm", "mlm"}
    value.backward()
    backbone = model.backbone
    for name, module in [("fusion", loss.fusion), ("itm head", loss.itm_head), ("mlm decoder", loss.mlm_decoder),
                         ("text encoder", backbone.instruction.clip.token_embedding),
                         ("text projection", backbone.text_tokens),
                         ("image encoder", backbone.image_encoder.model.patch_embed)]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    unbound = T2IMatchingLoss(ctx, layers=1, heads=2).train()
    with pytest.raises(RuntimeError, match="bind"):
        unbound(model(batch), batch)

