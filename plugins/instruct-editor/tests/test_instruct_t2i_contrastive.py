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


# the momentum text model (copy, average, distillation, checkpoints): test_instruct_t2i_momentum.py


def test_the_queues_host_mirror_follows_the_buffers_and_a_loaded_state(build_ctx, make_batch):
    """Which queue slots are keys, and which queries have a key of their identity, are
    chosen on the host (issue 19, item 9): the host mirror of the queues' identities and
    pointers equals the buffers after each step, wrapped around, and after a state is
    loaded (a resumed run)."""
    torch.manual_seed(2)
    loss = T2IContrastiveLoss(build_ctx(), queue_size=3, dim=2, momentum=None).train()
    for pids in ([0, 1, 0, 1], [5, 6, 5, 6]):
        loss(outputs_of(torch.randn(4, 2), [2, 3]), batch_with(make_batch, pids, [2, 3]))
        for name in ("image", "text"):
            ids, ptr = loss._host_queues[name]
            assert ids.tolist() == getattr(loss, f"{name}_ids").tolist() and ptr == int(getattr(loss, f"{name}_ptr"))
    fresh = T2IContrastiveLoss(build_ctx(), queue_size=3, dim=2, momentum=None).train()
    fresh.load_state_dict(loss.state_dict())
    assert fresh._host_queues["image"][0].tolist() == [6, 1, 5] and fresh._host_queues["image"][1] == 1
    # the restored loss continues as the original: the same keys, the same loss
    x, batch = torch.randn(4, 2), batch_with(make_batch, [6, 1, 6, 1], [2, 3])
    assert torch.equal(fresh(outputs_of(x, [2, 3]), batch)[0], loss(outputs_of(x, [2, 3]), batch)[0])
