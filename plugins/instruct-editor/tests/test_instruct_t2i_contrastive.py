"""The text-to-image branch's identity-aware image-text contrastive loss with queues
(`t2i_contrastive`, the authors' loss_cl), against a plain per-query loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid_instruct_editor.t2i_contrastive import T2IContrastiveLoss, contrastive


def loop_loss(queries, q_ids, keys, k_ids, temp):
    """-sum_j target(j) log softmax_j(q . k_j / temp), targets uniform over the keys of
    the query's identity, averaged over queries: one query at a time."""
    total = 0.0
    for q, y in zip(queries.tolist(), q_ids.tolist()):
        logits = [sum(a * b for a, b in zip(q, k)) / temp for k in keys.tolist()]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        same = [j for j, kid in enumerate(k_ids.tolist()) if kid == y]
        total += -sum(logits[j] - log_z for j in same) / len(same)
    return total / len(queries)


def batch_with(make_batch, pids, text_rows, tasks=None):
    batch = make_batch(["x"] * len(pids), pids=pids)
    batch.extras["task"] = tasks or ["text-to-image"] * len(pids)
    return batch


def outputs_of(x, text_rows):
    has_image = torch.ones(len(x), dtype=torch.bool)
    has_image[text_rows] = False
    return {"embedding": x, "has_image": has_image}


def test_four_terms_with_the_queue_equal_a_plain_loop(build_ctx, make_batch):
    torch.manual_seed(0)
    loss = T2IContrastiveLoss(build_ctx(), queue_size=5, dim=3, momentum=None).train()
    pids = [0, 0, 1, 1, 0, 1]  # rows 0-3 images, 4-5 captions
    first = torch.randn(6, 3)
    loss(outputs_of(first, [4, 5]), batch_with(make_batch, pids, [4, 5]))  # fills the queues
    x = torch.randn(6, 3)
    value, parts = loss(outputs_of(x, [4, 5]), batch_with(make_batch, [2, 2, 0, 1, 2, 0], [4, 5]))
    f, f0 = F.normalize(x, dim=1), F.normalize(first, dim=1)
    ids, ids0 = torch.tensor([2, 2, 0, 1, 2, 0]), torch.tensor(pids)
    v, t, v_ids, t_ids = f[:4], f[4:], ids[:4], ids[4:]
    img_keys = torch.cat([v, f0[:4]])
    img_ids = torch.cat([v_ids, ids0[:4]])
    txt_keys, txt_ids = torch.cat([t, f0[4:]]), torch.cat([t_ids, ids0[4:]])
    # i2t: image queries whose identity has a caption key (2 has one now, 0 from the queue; 1 from the queue)
    expect = {"i2t": loop_loss(v, v_ids, txt_keys, txt_ids, 0.07), "t2i": loop_loss(t, t_ids, img_keys, img_ids, 0.07),
              "i2i": loop_loss(v, v_ids, img_keys, img_ids, 0.07), "t2t": loop_loss(t, t_ids, txt_keys, txt_ids, 0.07)}
    for name, e in expect.items():
        assert math.isclose(float(parts[name]), e, rel_tol=1e-4), name
    assert math.isclose(float(value.detach()), sum(expect.values()) / 4, rel_tol=1e-4)


def test_keys_carry_no_gradient_and_the_queue_is_first_in_first_out(build_ctx, make_batch):
    torch.manual_seed(1)
    loss = T2IContrastiveLoss(build_ctx(), queue_size=3, dim=2, momentum=None).train()
    x = torch.randn(4, 2, requires_grad=True)
    value, _ = loss(outputs_of(x, [2, 3]), batch_with(make_batch, [0, 1, 0, 1], [2, 3]))
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert loss.image_ids.tolist() == [0, 1, -1] and loss.text_ids.tolist() == [0, 1, -1]
    loss(outputs_of(torch.randn(4, 2), [2, 3]), batch_with(make_batch, [5, 6, 5, 6], [2, 3]))
    assert loss.image_ids.tolist() == [6, 1, 5]  # wrapped around: the oldest slot replaced
    # keys are constants (the authors compute them without gradient): the gradient reaches x
    # through the queries only
    q = torch.randn(4, 2, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 1])
    fresh = T2IContrastiveLoss(build_ctx(), queue_size=0, dim=2, momentum=None).train()
    value, _ = fresh(outputs_of(q, [2, 3]), batch_with(make_batch, ids.tolist(), [2, 3]))
    (grad,) = torch.autograd.grad(value, q)

    def manual(detach):
        f = F.normalize(q, dim=1)
        k = f.detach() if detach else f
        v, t, kv, kt = f[:2], f[2:], k[:2], k[2:]
        return (contrastive(v, ids[:2], kt, ids[2:], 0.07) + contrastive(t, ids[2:], kv, ids[:2], 0.07)
                + contrastive(v, ids[:2], kv, ids[:2], 0.07) + contrastive(t, ids[2:], kt, ids[2:], 0.07)) / 4

    (expect,) = torch.autograd.grad(manual(True), q)
    (through_keys,) = torch.autograd.grad(manual(False), q)
    torch.testing.assert_close(grad, expect)
    assert not torch.allclose(grad, through_keys, atol=1e-4)


def test_other_tasks_and_batches_without_captions_give_zero(build_ctx, make_batch):
    loss = T2IContrastiveLoss(build_ctx(), queue_size=4, dim=2, momentum=None).train()
    x = torch.randn(4, 2, requires_grad=True)
    value, _ = loss(outputs_of(x, []), batch_with(make_batch, [0, 1, 0, 1], []))
    assert float(value.detach()) == 0.0
    value, _ = loss(outputs_of(x, [2, 3]), batch_with(make_batch, [0, 1, 0, 1], [2, 3], tasks=["traditional"] * 4))
    assert float(value.detach()) == 0.0 and int((loss.image_ids >= 0).sum()) == 0
    loss.eval()
    loss(outputs_of(x, [2, 3]), batch_with(make_batch, [0, 1, 0, 1], [2, 3]))
    assert int((loss.image_ids >= 0).sum()) == 0  # evaluation never writes the queues
    with pytest.raises(ValueError, match="queue_size"):
        T2IContrastiveLoss(build_ctx(), queue_size=-1, dim=2, momentum=None)


# ------------------------------------------------------------------ momentum model (ALBEF / the authors)
class Toy(torch.nn.Module):
    """A model whose embedding is a linear map of the batch's `feat` rows (a BatchNorm buffer
    to check buffers follow the live model)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(3, 3, bias=False)
        self.head = torch.nn.BatchNorm1d(3)

    def forward(self, batch):
        return {"embedding": self.backbone(batch.extras["feat"]), "has_image": ~batch.extras["text_query"]}


def toy_batch(make_batch, feat, pids, text_rows):
    batch = batch_with(make_batch, pids, text_rows)
    batch.extras["feat"] = feat
    batch.extras["text_query"] = torch.tensor([i in text_rows for i in range(len(pids))])
    return batch


def test_the_momentum_copy_is_an_exact_moving_average(build_ctx):
    torch.manual_seed(2)
    live = Toy()
    loss = T2IContrastiveLoss(build_ctx(), queue_size=4, dim=3, momentum=0.9)
    loss.bind(live)
    expect = live.backbone.weight.detach().clone().tolist()
    for _ in range(3):
        with torch.no_grad():
            live.backbone.weight.add_(torch.randn(3, 3))
            live.head.running_mean.add_(1.0)
        loss.momentum_model.update()
        w = live.backbone.weight.tolist()
        expect = [[0.9 * a + 0.1 * b for a, b in zip(ra, rb)] for ra, rb in zip(expect, w)]
    copy = loss.momentum_model.copy
    torch.testing.assert_close(copy.backbone.weight, torch.tensor(expect))
    torch.testing.assert_close(copy.head.running_mean, live.head.running_mean)
    loss.bind(live)  # the same model: the copy is kept
    assert loss.momentum_model.copy is copy
    # never a parameter, a buffer or a checkpoint entry of the loss
    assert all("backbone" not in k for k in loss.state_dict()) and len(list(loss.parameters())) == 1


def loop_soft(queries, q_ids, soft_queries, keys, k_ids, temp, alpha):
    """Cross-entropy of (alpha softmax(q_m . k / temp) + (1 - alpha) identity targets)
    against softmax(q . k / temp), one query at a time."""
    def log_softmax(values):
        top = max(values)
        log_z = top + math.log(sum(math.exp(v - top) for v in values))
        return [v - log_z for v in values]

    total = 0.0
    for q, qm, y in zip(queries.tolist(), soft_queries.tolist(), q_ids.tolist()):
        logp = log_softmax([sum(a * b for a, b in zip(q, k)) / temp for k in keys.tolist()])
        soft = [math.exp(v) for v in log_softmax([sum(a * b for a, b in zip(qm, k)) / temp for k in keys.tolist()])]
        same = [kid == y for kid in k_ids.tolist()]
        target = [alpha * s + (1 - alpha) * (1.0 / sum(same) if hit else 0.0) for s, hit in zip(soft, same)]
        total += -sum(t * lp for t, lp in zip(target, logp))
    return total / len(queries)


def test_momentum_distillation_equals_a_hand_computation(build_ctx, make_batch):
    """Keys and queue take the momentum model's caption features (updated before use);
    targets mix 0.4 of its softmax with 0.6 of the identity targets (the authors' loss_cl)."""
    torch.manual_seed(3)
    live = Toy()
    loss = T2IContrastiveLoss(build_ctx(), queue_size=6, dim=3, momentum=0.5, distill=0.4).train()
    loss.bind(live)
    w0 = live.backbone.weight.detach().clone()
    pids0, pids1 = [0, 1, 0, 1], [1, 2, 1, 2]  # rows 0-1 images, 2-3 captions
    f0, f1 = torch.randn(4, 3), torch.randn(4, 3)
    with torch.no_grad():
        live.backbone.weight.add_(torch.randn(3, 3))  # the live model moved away from the copy
    w1 = live.backbone.weight.detach().clone()
    loss(live(toy_batch(make_batch, f0, pids0, [2, 3])), toy_batch(make_batch, f0, pids0, [2, 3]))
    with torch.no_grad():
        live.backbone.weight.add_(torch.randn(3, 3))
    w2 = live.backbone.weight.detach().clone()
    value, parts = loss(live(toy_batch(make_batch, f1, pids1, [2, 3])), toy_batch(make_batch, f1, pids1, [2, 3]))
    m1 = 0.5 * w0 + 0.5 * w1  # the copy after the first update
    m2 = 0.5 * m1 + 0.5 * w2  # ... after the second (before the second loss)
    norm = lambda a: F.normalize(a, dim=1)  # noqa: E731
    v0, t0m = norm(f0[:2] @ w1.t()), norm(f0[2:] @ m1.t())
    v, t, tm = norm(f1[:2] @ w2.t()), norm(f1[2:] @ w2.t()), norm(f1[2:] @ m2.t())
    ids, ids0 = torch.tensor(pids1), torch.tensor(pids0)
    img_keys, img_ids = torch.cat([v, v0]), torch.cat([ids[:2], ids0[:2]])
    txt_keys, txt_ids = torch.cat([tm, t0m]), torch.cat([ids[2:], ids0[2:]])
    expect = {"i2t": loop_soft(v, ids[:2], v, txt_keys, txt_ids, 0.07, 0.4),
              "t2i": loop_soft(t, ids[2:], tm, img_keys, img_ids, 0.07, 0.4),
              "i2i": loop_soft(v, ids[:2], v, img_keys, img_ids, 0.07, 0.4),
              "t2t": loop_soft(t, ids[2:], tm, txt_keys, txt_ids, 0.07, 0.4)}
    for name, e in expect.items():
        assert math.isclose(float(parts[name]), e, rel_tol=1e-4), (name, float(parts[name]), e)
    assert math.isclose(float(value.detach()), sum(expect.values()) / 4, rel_tol=1e-4)
    # the text queue holds the momentum features, not the live ones
    torch.testing.assert_close(loss.text_queue[2:4], tm)


def test_gradients_never_reach_the_momentum_copy(build_ctx, make_batch):
    torch.manual_seed(4)
    live = Toy()
    loss = T2IContrastiveLoss(build_ctx(), queue_size=4, dim=3).train()  # momentum 0.995 by default
    loss.bind(live)
    feat = torch.randn(4, 3)
    batch = toy_batch(make_batch, feat, [0, 1, 0, 1], [2, 3])
    value, _ = loss(live(batch), batch)
    value.backward()
    copy = loss.momentum_model.copy
    assert live.backbone.weight.grad is not None and live.backbone.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in copy.parameters())
    unbound = T2IContrastiveLoss(build_ctx(), queue_size=4, dim=3).train()
    with pytest.raises(RuntimeError, match="bind"):
        unbound(live(batch), batch)
