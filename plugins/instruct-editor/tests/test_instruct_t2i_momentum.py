"""The momentum text model of `t2i_contrastive` (ALBEF / RaSa / the Instruct-ReID authors:
theta_m <- m theta_m + (1 - m) theta over their text encoder and text projection): a copy
of the text side only, an exact moving average, never reached by gradient, and saved with
the loss so that a resumed run ends with the momentum weights of an uninterrupted one;
one copy of the CLIP text tower for it and `t2i_matching` (the authors' one momentum
model), stepped once per training forward.

References: a plain loop for the average; a deep copy of the *whole* model, averaged
parameter by parameter, for the features (the text side must compute what the model's
own text-only path computes)."""

import copy
import io
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from core.pipeline import ReIDModel, bind_losses
from reid_instruct_editor.backbone import InstructEditor
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.t2i_contrastive import T2IContrastiveLoss
from reid_instruct_editor.t2i_matching import T2IMatchingLoss

CAPTIONS = ["a man in a red coat and blue jeans", "a woman with a black bag and white shoes",
            "a child wearing a green shirt", "a tall man with a grey backpack"]
TEXT_SIDE = ("encoder.", "cls.", "projection.", "bn.")


@pytest.fixture
def build(build_ctx, tiny):
    """seed -> (a tiny model in training mode, its build context)."""
    return lambda seed=0: tiny_model(build_ctx, tiny, seed)


def tiny_model(build_ctx, tiny, seed=0):
    torch.manual_seed(seed)
    ctx = build_ctx()
    backbone = InstructEditor(ctx, **tiny["vit"], clip_config=tiny["clip"], freeze_text_encoder=False,
                              freeze_image_encoder=False, reference_encoder=False)
    ctx.feature_dim = backbone.feature_dim
    return ReIDModel(backbone, InstructHead(ctx, classifier=False)).train(), ctx


def t2i_batch(make_batch, pids=(0, 1, 0, 1), seed=0):
    """Images of `pids` then their captions alone (text-to-image training rows)."""
    n = len(pids)
    batch = make_batch(["retrieve the described person"] * n + CAPTIONS[:n], pids=list(pids) * 2,
                       text_query=[False] * n + [True] * n, seed=seed)
    batch.extras["task"] = ["text-to-image"] * (2 * n)
    return batch


def perturb(model, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def ema_reference(reference, live, m):
    """The whole-model average by a plain loop: every parameter, buffers copied."""
    with torch.no_grad():
        live_p = dict(live.named_parameters())
        for name, p in reference.named_parameters():
            p.copy_(m * p + (1 - m) * live_p[name])
        live_b = dict(live.named_buffers())
        for name, b in reference.named_buffers():
            b.copy_(live_b[name])


def test_the_copy_holds_the_text_side_only(build):
    model, ctx = build()
    loss = T2IContrastiveLoss(ctx, queue_size=4)
    loss.bind(model)
    names = [n for n, _ in loss.momentum_model.copy.named_parameters()]
    assert names and all(n.startswith(TEXT_SIDE) for n in names)
    assert not any(n.startswith("encoder.clip.visual") for n in names)
    assert loss.momentum_model.copy.encoder.clip.visual is None
    # no tensor of the copy is (or shares storage with) a live image-side parameter
    image_side = [model.backbone.image_encoder, model.backbone.editing, model.backbone.instruction.clip.visual,
                  model.backbone.image_tokens, model.head.fusion_bn]
    image_ptrs = {p.data_ptr() for m in image_side for p in m.parameters()}
    assert not image_ptrs & {p.data_ptr() for p in loss.momentum_model.copy.parameters()}
    # exactly the live text side's parameters, by name and shape
    live_text = dict(loss.momentum_model.live.named_parameters())
    assert {n: p.shape for n, p in loss.momentum_model.copy.named_parameters()} == \
        {n: p.shape for n, p in live_text.items() if not n.startswith("encoder.clip.visual")}
    whole = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in loss.momentum_model.copy.parameters()) < whole


def test_the_copy_is_an_exact_moving_average_of_the_text_side(build):
    model, ctx = build()
    loss = T2IContrastiveLoss(ctx, queue_size=4, momentum=0.9)
    loss.bind(model)
    live = loss.momentum_model.live
    picks = ["cls.weight", "projection.weight", "encoder.clip.token_embedding.weight"]
    expect = {n: dict(live.named_parameters())[n].detach().clone() for n in picks}
    for step in range(3):
        perturb(model)
        with torch.no_grad():
            model.head.text_bn.running_mean.add_(1.0)
        loss.momentum_model.update()
        now = dict(live.named_parameters())
        for n in picks:
            expect[n] = 0.9 * expect[n] + 0.1 * now[n].detach()
    copied = dict(loss.momentum_model.copy.named_parameters())
    for n in picks:
        torch.testing.assert_close(copied[n], expect[n])
    torch.testing.assert_close(loss.momentum_model.copy.bn.running_mean, model.head.text_bn.running_mean)
    copy_before = loss.momentum_model.copy
    loss.bind(model)  # the same model: the copy is kept
    assert loss.momentum_model.copy is copy_before
    # not a parameter or buffer of the loss (no optimiser, no DDP gradient)
    assert len(list(loss.parameters())) == 1
    assert not any(k.startswith("encoder") for k, _ in loss.named_buffers())


def test_text_side_features_equal_a_whole_model_average(build, make_batch):
    """The copy's caption features = those of a deep copy of the whole model averaged by
    a plain loop and run on the caption rows (the model's own text-only path)."""
    model, ctx = build()
    loss = T2IContrastiveLoss(ctx, queue_size=4, momentum=0.7)
    loss.bind(model)
    reference = copy.deepcopy(model)
    for _ in range(2):
        perturb(model)
        loss.momentum_model.update()
        ema_reference(reference, model, 0.7)
    batch = t2i_batch(make_batch)
    texts = batch.extras["text_query"]
    with torch.no_grad():
        expect = reference.train()(batch.select(texts))["embedding"]
    got = loss.momentum_model(CAPTIONS[:4])["embedding"]
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


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


def test_momentum_distillation_equals_a_hand_computation(build, make_batch):
    """Keys and queue take the momentum model's caption features (updated before use);
    targets mix 0.4 of its softmax with 0.6 of the identity targets (the authors' loss_cl)."""
    model, ctx = build()
    loss = T2IContrastiveLoss(ctx, queue_size=8, momentum=0.5, distill=0.4).train()
    loss.bind(model)
    reference = copy.deepcopy(model)
    norm = lambda a: F.normalize(a.detach(), dim=1)  # noqa: E731
    seen = []
    for step, pids in enumerate([(0, 1), (1, 2)]):
        perturb(model, 0.2)  # the live model moves away from the copy
        ema_reference(reference, model, 0.5)
        batch = t2i_batch(make_batch, pids, seed=step)
        out = model(batch)
        value, parts = loss(out, batch)
        with torch.no_grad():
            t_m = reference.train()(batch.select(batch.extras["text_query"]))["embedding"]
        seen.append((norm(out["embedding"][:2]), norm(out["embedding"][2:]), norm(t_m), torch.tensor(pids)))
    (v0, _, t0m, ids0), (v, t, tm, ids) = seen
    img_keys, img_ids = torch.cat([v, v0]), torch.cat([ids, ids0])
    txt_keys, txt_ids = torch.cat([tm, t0m]), torch.cat([ids, ids0])
    expect = {"i2t": loop_soft(v, ids, v, txt_keys, txt_ids, 0.07, 0.4),
              "t2i": loop_soft(t, ids, tm, img_keys, img_ids, 0.07, 0.4),
              "i2i": loop_soft(v, ids, v, img_keys, img_ids, 0.07, 0.4),
              "t2t": loop_soft(t, ids, tm, txt_keys, txt_ids, 0.07, 0.4)}
    for name, e in expect.items():
        assert math.isclose(float(parts[name]), e, rel_tol=1e-4), (name, float(parts[name]), e)
    assert math.isclose(float(value.detach()), sum(expect.values()) / 4, rel_tol=1e-4)
    torch.testing.assert_close(loss.text_queue[2:4], tm, atol=1e-5, rtol=1e-5)  # momentum features queued


def test_gradients_never_reach_the_momentum_copy(build, make_batch):
    model, ctx = build()
    loss = T2IContrastiveLoss(ctx, queue_size=4).train()  # momentum 0.995 by default
    loss.bind(model)
    batch = t2i_batch(make_batch)
    value, _ = loss(model(batch), batch)
    value.backward()
    grads = [p.grad for p in model.head.text_projection.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.momentum_model.copy.parameters())
    unbound = T2IContrastiveLoss(ctx, queue_size=4).train()
    with pytest.raises(RuntimeError, match="bind"):
        unbound(model(batch), batch)


# ------------------------------------------------------------------ checkpoints
def train_steps(model, loss, optimizer, steps, make_batch):
    for step in steps:
        torch.manual_seed(1000 + step)
        batch = t2i_batch(make_batch, [(0, 1), (1, 2), (2, 3), (3, 0)][step % 4], seed=step)
        value, _ = loss(model(batch), batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()


def build_run(build, seed):
    model, ctx = build(seed)
    loss = T2IContrastiveLoss(ctx, queue_size=16, momentum=0.9).train()
    losses = torch.nn.ModuleList([loss])
    optimizer = torch.optim.SGD([*model.parameters(), *losses.parameters()], lr=0.5)
    return model, losses, optimizer


def test_a_resumed_run_ends_with_the_momentum_weights_of_an_uninterrupted_one(build, make_batch):
    """As the trainer: save model and losses' state; resume = load both, then bind."""
    model, losses, optimizer = build_run(build, 0)
    bind_losses(model, losses)
    train_steps(model, losses[0], optimizer, range(3), make_batch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "losses": losses.state_dict()}, buffer)
    train_steps(model, losses[0], optimizer, range(3, 6), make_batch)
    straight = losses[0].momentum_model.state_dict()

    resumed, resumed_losses, resumed_opt = build_run(build, 1)  # other initial weights
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(state["model"])
    resumed_losses.load_state_dict(state["losses"])
    bind_losses(resumed, resumed_losses)  # the trainer binds after restoring
    train_steps(resumed, resumed_losses[0], resumed_opt, range(3, 6), make_batch)
    again = resumed_losses[0].momentum_model.state_dict()
    assert again.keys() == straight.keys()
    for k in straight:
        assert torch.equal(again[k], straight[k]), k
    # the copy moved away from the live weights (the test would not tell otherwise)
    live = dict(resumed_losses[0].momentum_model.live.named_parameters())
    assert not torch.equal(live["cls.weight"], dict(resumed_losses[0].momentum_model.copy.named_parameters())
                           ["cls.weight"])


def test_a_checkpoint_without_the_copy_restarts_it_from_the_live_weights(build, make_batch):
    model, losses, optimizer = build_run(build, 0)
    bind_losses(model, losses)
    train_steps(model, losses[0], optimizer, range(2), make_batch)
    old = {k: v for k, v in losses.state_dict().items() if not k.endswith("_extra_state")}
    fresh, fresh_losses, _ = build_run(build, 0)
    fresh_losses.load_state_dict(old)  # strict: loads
    fresh.load_state_dict(model.state_dict())
    bind_losses(fresh, fresh_losses)
    live = dict(fresh_losses[0].momentum_model.live.named_parameters())
    for name, p in fresh_losses[0].momentum_model.copy.named_parameters():
        assert torch.equal(p, live[name]), name
    # a saved copy of another shape is refused with the key at fault
    state = losses.state_dict()
    state["0._extra_state"]["momentum_copy"].pop("cls.weight")
    other, other_losses, _ = build_run(build, 0)
    other_losses.load_state_dict(state)
    with pytest.raises(ValueError, match="momentum copy"):
        bind_losses(other, other_losses)


def test_the_momentum_model_reads_the_phrasing_the_live_model_drew(build, make_batch):
    """A caption with several phrasings: the live model reads one drawn phrasing per step
    (backbone.py); the momentum model must give its targets for that same text. With
    momentum 0 the copy equals the live model after its update, so the queued momentum
    features of the caption rows equal the live model's own caption embeddings -- which
    fails when the copy reads another phrasing (e.g. always the first)."""
    model, ctx = build()
    loss = T2IContrastiveLoss(ctx, queue_size=16, momentum=0.0, distill=0.4).train()
    loss.bind(model)
    pids = (0, 1, 2, 3)
    phrasings = [tuple(f"{c} (phrasing {k})" for k in range(4)) for c in CAPTIONS[:4]]
    batch = make_batch(["retrieve the described person"] * 4 + phrasings, pids=list(pids) * 2,
                       text_query=[False] * 4 + [True] * 4, seed=0)
    batch.extras["task"] = ["text-to-image"] * 8
    batch.indices = torch.arange(100, 108)
    with torch.no_grad():
        out = model(batch)
        drawn = model.backbone.drawn_texts(batch, [4, 5, 6, 7])
        assert any(d != p[0] for d, p in zip(drawn, phrasings))  # the check below can tell the first apart
        loss(out, batch)
    torch.testing.assert_close(loss.text_queue[:4], F.normalize(out["embedding"][4:], dim=1), atol=1e-5, rtol=1e-5)


def test_drawn_texts_after_a_loaded_draw_counter_name_what_the_forward_read_without_a_host_sync(build, make_batch):
    """The draw counter is checkpointed (a resumed run draws on): after loading a state with
    the counter at 5, `drawn_texts` (on the host: the indices' host copy and the counter's
    host mirror, no host sync) names the phrasings the next training forward encoded."""
    from core.host_syncs import count_host_syncs

    model, _ = build()
    state = model.state_dict()
    state["backbone.phrase_draws"] = torch.tensor(5)
    model.load_state_dict(state)
    phrasings = [tuple(f"{c} (phrasing {k})" for k in range(4)) for c in CAPTIONS[:4]]
    batch = make_batch(["retrieve the described person"] * 4 + phrasings, pids=[0, 1, 2, 3] * 2,
                       text_query=[False] * 4 + [True] * 4, seed=0)
    batch.extras["task"] = ["text-to-image"] * 8
    batch.indices = torch.arange(100, 108)
    batch.keep_host_copies()  # as collate makes it
    encoder = model.backbone.instruction
    read, encode = [], encoder.encode_text
    encoder.encode_text = lambda tokens: read.append(tokens) or encode(tokens)
    with torch.no_grad():
        model(batch)
    with count_host_syncs() as syncs:
        drawn = model.backbone.drawn_texts(batch, [4, 5, 6, 7])
    assert syncs.total == 0, syncs.by_op
    assert torch.equal(read[0][4:], encoder.tokenize(drawn, torch.device("cpu")))  # rows 4-7: the captions


# ------------------------------------------------------------------ one tower for both losses
def both_losses(ctx, momentum=0.9, matching_momentum=None):
    """t2i_contrastive and t2i_matching (no dropout), in the order of the pipelines."""
    contrastive = T2IContrastiveLoss(ctx, queue_size=16, momentum=momentum).train()
    matching = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.0,
                               momentum=momentum if matching_momentum is None else matching_momentum).train()
    return torch.nn.ModuleList([contrastive, matching])


def other_task_batch(make_batch, seed):
    """A batch of another task: no caption pairs (the matching loss returns early)."""
    batch = make_batch(["do not change clothes"] * 4, pids=[0, 1, 0, 1], seed=seed)
    batch.extras["task"] = ["traditional"] * 4
    return batch


def joint_steps(model, losses, optimizer, kinds, make_batch, first=0):
    """Training steps of both losses; `kinds`: "t2i" or "other" per step. Returns each
    step's loss values (contrastive, matching)."""
    values = []
    for step, kind in enumerate(kinds, start=first):
        torch.manual_seed(100 + step)
        batch = t2i_batch(make_batch, seed=step) if kind == "t2i" else other_task_batch(make_batch, step)
        out = model(batch)
        parts = [loss(out, batch)[0] for loss in losses]
        optimizer.zero_grad()
        sum(parts).backward()
        optimizer.step()
        values.append([float(p.detach()) for p in parts])
    return values


def joint_run(build, seed=0, momentum=0.9):
    model, ctx = build(seed)
    losses = both_losses(ctx, momentum)
    optimizer = torch.optim.SGD([*model.parameters(), *losses.parameters()], lr=0.5)
    return model, losses, optimizer


def test_both_losses_read_one_text_tower_stepped_once_per_forward(build, make_batch):
    """One module; its average = a plain loop taking one step per training forward (batches
    of another task included: the contrastive loss runs there), not one per loss."""
    model, losses, optimizer = joint_run(build)
    bind_losses(model, losses)
    contrastive, matching = losses
    tower = contrastive.momentum_model.copy.encoder
    assert matching.momentum_model.copy.encoder is tower
    assert tower.clip.visual is None
    live = model.backbone.instruction
    expect = {n: p.detach().clone() for n, p in tower.named_parameters()}  # the live weights at bind time
    for step, kind in enumerate(["t2i", "other", "t2i"]):
        now = dict(live.named_parameters())
        for n in expect:  # the step of this forward, towards the weights it reads
            expect[n] = 0.9 * expect[n] + 0.1 * now[n].detach()
        joint_steps(model, losses, optimizer, [kind], make_batch, first=step)
    for n, p in tower.named_parameters():
        torch.testing.assert_close(p, expect[n], rtol=0, atol=1e-6, msg=n)
    assert not torch.equal(tower.clip.token_embedding.weight, live.clip.token_embedding.weight)


def test_the_tower_is_saved_once_and_a_resume_is_exact(build, make_batch):
    """The first loss bound saves the tower (its `encoder.*` keys, as before); the other its
    own parts only. Save after two steps, resume into other weights: the same end, bit for bit."""
    model, losses, optimizer = joint_run(build)
    bind_losses(model, losses)
    kinds = ["t2i", "other", "t2i", "t2i"]
    joint_steps(model, losses, optimizer, kinds[:2], make_batch)
    state = losses.state_dict()
    saved = [state[f"{i}._extra_state"]["momentum_copy"] for i in (0, 1)]
    assert any(k.startswith("encoder.") for k in saved[0]) and any(k.startswith("cls.") for k in saved[0])
    assert not any(k.startswith("encoder.") for k in saved[1]) and any(k.startswith("fusion.") for k in saved[1])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "losses": state, "optimizer": optimizer.state_dict()}, buffer)
    straight = joint_steps(model, losses, optimizer, kinds[2:], make_batch, first=2)

    resumed, resumed_losses, resumed_opt = joint_run(build, seed=1)  # other initial weights
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(loaded["model"])
    resumed_losses.load_state_dict(loaded["losses"])
    resumed_opt.load_state_dict(loaded["optimizer"])
    bind_losses(resumed, resumed_losses)  # the trainer binds after restoring
    again = joint_steps(resumed, resumed_losses, resumed_opt, kinds[2:], make_batch, first=2)
    assert again == straight
    for a, b in zip(losses, resumed_losses):
        for (k, x), (_, y) in zip(sorted(a.momentum_model.state_dict().items()),
                                  sorted(b.momentum_model.state_dict().items())):
            assert torch.equal(x, y), k


def test_a_checkpoint_of_two_towers_loads_keeping_the_first(build, make_batch):
    """Written when each loss kept its own tower: the matching loss's `encoder.*` keys are
    left out, the contrastive loss's tower is the one restored."""
    model, losses, optimizer = joint_run(build)
    bind_losses(model, losses)
    joint_steps(model, losses, optimizer, ["t2i"], make_batch)
    state = losses.state_dict()
    first, second = (state[f"{i}._extra_state"]["momentum_copy"] for i in (0, 1))
    second.update({k: torch.zeros_like(v) for k, v in first.items() if k.startswith("encoder.")})
    fresh, fresh_losses, _ = joint_run(build, seed=1)
    fresh.load_state_dict(model.state_dict())
    fresh_losses.load_state_dict(state)
    bind_losses(fresh, fresh_losses)
    tower = fresh_losses[1].momentum_model.copy.encoder
    for n, p in tower.named_parameters():
        assert torch.equal(p, first["encoder." + n]), n


def test_sharing_changes_no_loss_where_the_two_copies_stepped_alike(build, make_batch, monkeypatch):
    """Two towers (as before: one per loss) against one: with a caption pair in every
    forward both old towers took the same steps from the same weights, and every loss is
    the same to the bit. With a batch of another task between, the old matching tower
    missed that step (the contrastive one did not): the matching loss differs after it."""
    from reid_instruct_editor import momentum

    def losses_of(kinds, separate):
        model, losses, optimizer = joint_run(build)
        if separate:  # each loss finds no tower to share: the two-copy code
            for loss in losses:
                monkeypatch.setattr(momentum, "_SHARED", weakref.WeakKeyDictionary())
                loss.bind(model)
            assert losses[0].momentum_model.copy.encoder is not losses[1].momentum_model.copy.encoder
        else:
            bind_losses(model, losses)
        return joint_steps(model, losses, optimizer, kinds, make_batch)

    alike = ["t2i", "t2i", "t2i"]
    assert losses_of(alike, separate=True) == losses_of(alike, separate=False)
    mixed = ["t2i", "other", "t2i"]
    one, two = losses_of(mixed, separate=False), losses_of(mixed, separate=True)
    assert [s[0] for s in one] == [s[0] for s in two]  # the contrastive loss reads the tower it always read
    assert one[:2] == two[:2] and one[2][1] != two[2][1]


def test_the_two_losses_must_share_one_momentum(build):
    model, ctx = build()
    losses = both_losses(ctx, momentum=0.9, matching_momentum=0.99)
    with pytest.raises(ValueError, match="t2i_matching.*momentum 0.99 differs from 0.9 of loss 't2i_contrastive'"):
        bind_losses(model, losses)
