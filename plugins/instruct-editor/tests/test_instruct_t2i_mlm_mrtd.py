"""The matching branch's momentum terms (the authors' `loss_mlm` with soft labels and
`loss_mrtd`, from RaSa / ALBEF), from their definitions:

    L_mlm  = (1 - a) CE(p, y) + a mean_chosen(-sum_v q_m(v) log p(v)),  a = 0.4
    L_mrtd = CE(head(fused(corrupt)), [corrupt != original]) over positions 1..end-of-text

q_m and the replacements come from a momentum model; the reference momentum model here is
a deep copy of the whole model and loss averaged by a plain loop."""

import copy
import math

import pytest
import torch

from core.pipeline import ReIDModel
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.t2i_matching import T2IMatchingLoss, mask_tokens

CAPTIONS = ["a man in a red coat and blue jeans", "a woman with a black bag and white shoes",
            "a child wearing a green shirt"]


@pytest.fixture
def setup(editor, make_batch):
    """Live model and loss (momentum 0.5) moved away from a reference copy taken at bind
    time; the copy and the reference averaged once, by the loss and by a plain loop."""
    backbone, ctx = editor
    torch.manual_seed(3)
    model = ReIDModel(backbone, InstructHead(ctx, classifier=False)).train()
    loss = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.0, momentum=0.5).train()
    loss.bind(model)
    reference = copy.deepcopy((model, loss))
    with torch.no_grad():
        for p in [*model.parameters(), *loss.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
        live = dict([*(("m." + n, p) for n, p in model.named_parameters()),
                     *(("l." + n, p) for n, p in loss.named_parameters())])
        for n, p in [*(("m." + n, p) for n, p in reference[0].named_parameters()),
                     *(("l." + n, p) for n, p in reference[1].named_parameters())]:
            p.copy_(0.5 * p + 0.5 * live[n])
    loss.momentum_model.update()
    batch = make_batch(["retrieve the described person"] * 3 + CAPTIONS, pids=[0, 1, 2, 0, 1, 2],
                       text_query=[False] * 3 + [True] * 3)
    batch.extras["task"] = ["text-to-image"] * 6
    out = model(batch)
    caps, imgs, _, _ = loss.pairs(out, batch)
    return model, loss, reference, batch, out, caps, imgs


def tokens_of(model):
    enc = model.backbone.instruction
    tokens = enc.tokenize(CAPTIONS, torch.device("cpu"))
    eot = tokens.argmax(dim=1)
    pos = torch.arange(tokens.shape[1])[None, :]
    return tokens, (pos > 0) & (pos < eot[:, None]), eot, pos


def mlm_logits(model, loss, masked, image, at):
    """The BERT prediction at `at` of a model and loss's own modules (no shared code)."""
    _, states, valid = model.backbone.instruction.encode_text(masked)
    fused = loss.fusion(model.backbone.text_tokens(states), valid, image)
    return loss.mlm_decoder(loss.mlm_transform(fused[at]))


def test_mlm_distillation_equals_the_definition(setup):
    model, loss, (ref_model, ref_loss), batch, out, caps, imgs = setup
    loss.mlm_probability = 0.5
    torch.manual_seed(7)
    value = loss.mlm_loss(batch, caps, imgs, out["image_tokens"])
    tokens, maskable, _, _ = tokens_of(model)
    sot = int(tokens[0, 0])
    torch.manual_seed(7)
    masked, chosen = mask_tokens(tokens, maskable, sot, (1, sot), probability=0.5)
    assert chosen.sum() >= 3
    image = out["image_tokens"][imgs]
    with torch.no_grad():
        p_log = torch.log_softmax(mlm_logits(model, loss, masked, image, chosen).double(), dim=-1)
        q = torch.softmax(mlm_logits(ref_model, ref_loss, masked, image, chosen).double(), dim=-1)
    total = 0.0
    for row_p, row_q, label in zip(p_log, q, tokens[chosen].tolist()):
        ce = -float(row_p[label])
        soft = -float((row_q * row_p).sum())  # over the vocabulary
        total += 0.6 * ce + 0.4 * soft
    assert math.isclose(float(value.detach()), total / int(chosen.sum()), rel_tol=1e-4)
    # the distillation term trains the live model (not detached): alone, it has a gradient
    loss.mlm_distill = 1.0
    torch.manual_seed(7)
    loss.zero_grad()
    loss.mlm_loss(batch, caps, imgs, out["image_tokens"]).backward()
    grads = [p.grad for p in loss.fusion.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in loss.momentum_model.copy.parameters())


def force_generator(loss, token):
    """The momentum MLM head predicts `token` everywhere (its decoder: bias only)."""
    decoder = loss.momentum_model.copy.mlm_decoder
    with torch.no_grad():
        decoder.weight.zero_()
        decoder.bias.fill_(-30.0)
        decoder.bias[token] = 30.0


def test_mrtd_equals_the_definition(setup):
    model, loss, _, batch, out, caps, imgs = setup
    token = 1000  # an ordinary token (below start-of-text)
    force_generator(loss, token)
    tokens, maskable, eot, pos = tokens_of(model)
    sot = int(tokens[0, 0])
    image = out["image_tokens"][imgs]
    generator_inputs = []
    forward = loss.momentum_model.copy.forward
    loss.momentum_model.copy.forward = lambda *a: generator_inputs.append(a[0].clone()) or forward(*a)
    for resample in ("masked", "all"):
        loss.mrtd_resample = resample
        torch.manual_seed(11)
        value = loss.mrtd_loss(batch, caps, imgs, out["image_tokens"])
        torch.manual_seed(11)
        masked, chosen = mask_tokens(tokens, maskable, sot, (1, sot), probability=0.3)
        assert chosen.any() and not chosen.all()
        assert torch.equal(generator_inputs[-1], masked)  # the generator reads the masked caption
        corrupt = tokens.clone()
        corrupt[chosen if resample == "masked" else maskable] = token
        detect = (pos >= 1) & (pos <= eot[:, None])  # end-of-text included, start and padding not
        labels = (corrupt != tokens)[detect].tolist()
        assert 0 < sum(labels) < len(labels)
        _, states, valid = model.backbone.instruction.encode_text(corrupt)
        fused = loss.fusion(model.backbone.text_tokens(states), valid, image)
        logits = loss.mrtd_head(fused[detect]).tolist()
        total = 0.0
        for row, label in zip(logits, labels):
            top = max(row)
            total += -(row[int(label)] - top - math.log(sum(math.exp(v - top) for v in row)))
        assert math.isclose(float(value.detach()), total / len(logits), rel_tol=1e-4), resample
    # the detector trains the live text encoder and fusion (nothing detached)
    loss.zero_grad()
    model.zero_grad()
    value.backward()
    for module in (loss.fusion, model.backbone.text_tokens, model.backbone.instruction.clip.token_embedding):
        assert sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None) > 0


def test_mrtd_samples_from_the_momentum_model_never_delimiters(setup):
    model, loss, _, batch, out, caps, imgs = setup
    tokens, maskable, _, _ = tokens_of(model)
    sot = int(tokens[0, 0])
    decoder = loss.momentum_model.copy.mlm_decoder
    with torch.no_grad():  # the generator prefers start-, end-of-text and padding: never drawn
        decoder.weight.zero_()
        decoder.bias.fill_(0.0)
        decoder.bias[sot:] = 50.0
        decoder.bias[0] = 50.0
    loss.mrtd_resample = "all"
    seen = []
    real = loss._side[0].fused

    def spy(corrupt, image):
        seen.append(corrupt.clone())
        return real(corrupt, image)

    loss._side[0].fused = spy
    torch.manual_seed(2)
    loss.mrtd_loss(batch, caps, imgs, out["image_tokens"])
    corrupt = seen[0]
    assert bool(((corrupt[maskable] >= 1) & (corrupt[maskable] < sot)).all())
    assert torch.equal(corrupt[~maskable], tokens[~maskable])  # delimiters and padding kept


def test_forward_updates_the_copy_first_and_trains_the_live_side_only(editor, make_batch):
    backbone, ctx = editor
    torch.manual_seed(4)
    model = ReIDModel(backbone, InstructHead(ctx, classifier=False)).train()
    loss = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.0, momentum=0.9).train()
    loss.bind(model)
    start = loss.mrtd_head.weight.detach().clone()
    fusion0 = loss.fusion.layers[0].ffn[0].weight.detach().clone()
    with torch.no_grad():
        loss.fusion.layers[0].ffn[0].weight.add_(1.0)
    batch = make_batch(["retrieve the described person"] * 3 + CAPTIONS, pids=[0, 1, 2, 0, 1, 2],
                       text_query=[False] * 3 + [True] * 3)
    batch.extras["task"] = ["text-to-image"] * 6
    torch.manual_seed(0)
    value, parts = loss(model(batch), batch)
    assert set(parts) == {"pitm", "mlm", "mrtd"}
    copied = loss.momentum_model.copy.fusion.layers[0].ffn[0].weight
    torch.testing.assert_close(copied, 0.9 * fusion0 + 0.1 * (fusion0 + 1.0))
    value.backward()
    assert loss.mrtd_head.weight.grad is not None and loss.mrtd_head.weight.grad.abs().sum() > 0
    assert model.backbone.instruction.clip.token_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.momentum_model.copy.parameters())
    names = [n for n, _ in loss.momentum_model.copy.named_parameters()]
    assert not any(n.startswith("encoder.clip.visual") for n in names) and any(n.startswith("fusion") for n in names)
    assert torch.equal(start, loss.mrtd_head.weight.detach())  # no step taken here
    # saved with the loss: a fresh loss restores the average when bound
    state = loss.state_dict()
    fresh = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.0, momentum=0.9).train()
    fresh.load_state_dict(state)
    fresh.bind(model)
    for (n, a), (_, b) in zip(fresh.momentum_model.copy.named_parameters(),
                              loss.momentum_model.copy.named_parameters()):
        assert torch.equal(a, b), n
    # a checkpoint from before the momentum terms (no copy, no m-RTD head, no step count) loads
    old = {k: v for k, v in state.items() if not k.startswith(("mrtd_head", "_extra", "trained_steps"))}
    older = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.0, momentum=0.9)
    older.load_state_dict(old)
    assert int(older.trained_steps) == 1  # it did train: re-ranking may use it
    plain = T2IMatchingLoss(ctx, layers=1, heads=2, momentum=None)
    assert plain.mrtd_weight == 0.0 and plain.mlm_distill == 0.0 and plain.mrtd_head is None
    with pytest.raises(ValueError, match="mrtd_resample"):
        T2IMatchingLoss(ctx, layers=1, heads=2, mrtd_resample="some")
