"""IRM++'s memory under gradient accumulation (issue 19): a step of two micro-batches of b
behaves as one batch of 2b — the losses read the memory as at the step's start, and the
update at the step's end uses every micro-batch (not only the last one)."""

import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.records import Batch
from reid_instruct_editor.memory import IRMMemoryLoss

SLOTS, DIM = 5, 4


def make_batch(_instructions, pids) -> Batch:
    """The fields the memory loss reads (identities); the rest zeros."""
    n = len(pids)
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.zeros(n, 3, 2, 2), pids=torch.as_tensor(pids), camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(n))


def world(seed: int = 0):
    """8 rows: identities 0, 1 in the first half, 2, 3 (and a row of 1) in the second."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(8, DIM, generator=g)
    pids = [0, 0, 1, 1, 2, 2, 3, 1]
    instructions = torch.randn(8, 3, generator=g)
    instructions[1] = instructions[0]  # one instruction-consistent pair: the soft term has targets
    return emb, pids, instructions


def new_loss(prefilled: bool) -> IRMMemoryLoss:
    loss = IRMMemoryLoss(BuildContext(num_identities=SLOTS, feature_dim=DIM), dim=DIM, momentum=0.2)
    if prefilled:
        g = torch.Generator().manual_seed(1)
        loss.memory.copy_(F.normalize(torch.randn(SLOTS, DIM, generator=g), dim=1))
        loss.filled.fill_(True)
    return loss


def step(loss: IRMMemoryLoss, emb: torch.Tensor, pids, instructions, chunks: list[slice]):
    """One training step as the trainer runs it: per micro-batch forward and backward of
    loss / accumulate, then on_step_end. Returns (summed loss, gradient of emb)."""
    x = emb.clone().requires_grad_(True)
    total = 0.0
    for rows in chunks:
        value, _ = loss({"embedding": x[rows], "instruction_embedding": instructions[rows]},
                        make_batch(["x"] * len(pids[rows]), pids=pids[rows]))
        (value / len(chunks)).backward()
        total += float(value.detach()) / len(chunks)
    loss.on_step_end(trainer=None, step=1, batch=None, outputs={}, losses={})
    return total, x.grad


def reference_update(memory: torch.Tensor, filled: torch.Tensor, emb: torch.Tensor, pids, mu: float = 0.2):
    """The update of the memory bank's docstring with the whole batch, as a plain loop."""
    memory, filled = memory.clone(), filled.clone()
    f = F.normalize(emb, dim=1)
    for y in sorted(set(pids)):
        mean = F.normalize(torch.stack([f[i] for i, p in enumerate(pids) if p == y]).sum(0), dim=0)
        memory[y] = F.normalize(mu * memory[y] + (1 - mu) * mean, dim=0) if filled[y] else mean
        filled[y] = True
    return memory, filled


def test_two_micro_batches_equal_one_batch_of_twice_the_size():
    emb, pids, instructions = world()
    halves = [slice(0, 4), slice(4, 8)]
    whole, accumulated = new_loss(prefilled=True), new_loss(prefilled=True)
    start = whole.memory.clone()
    value, grad = step(whole, emb, pids, instructions, [slice(0, 8)])
    # two micro-batches of 4: the loss is their mean; equal to the 8-row batch's when no
    # identity's instruction-consistent positives are split (row 7 of identity 1 has none)
    value2, grad2 = step(accumulated, emb, pids, instructions, halves)
    assert abs(value - value2) < 1e-5
    torch.testing.assert_close(grad2, grad, rtol=1e-5, atol=1e-7)
    expected, _ = reference_update(start, torch.ones(SLOTS, dtype=torch.bool), emb, pids)
    torch.testing.assert_close(whole.memory, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accumulated.memory, expected, rtol=1e-5, atol=1e-6)
    assert accumulated.memory[4].equal(start[4])  # identity 4 not in the batch: untouched
    # the next step starts afresh: only its own micro-batches move the memory
    before = accumulated.memory.clone()
    step(accumulated, emb * 2 + 1, pids, instructions, [slice(4, 8)])
    expected, _ = reference_update(before, torch.ones(SLOTS, dtype=torch.bool), (emb * 2 + 1)[4:], pids[4:])
    torch.testing.assert_close(accumulated.memory, expected, rtol=1e-5, atol=1e-6)


def test_slots_first_seen_in_an_accumulated_step_hold_the_whole_step_mean():
    emb, pids, instructions = world(seed=3)
    accumulated = new_loss(prefilled=False)
    step(accumulated, emb, pids, instructions, [slice(0, 4), slice(4, 8)])
    expected, filled = reference_update(torch.zeros(SLOTS, DIM), torch.zeros(SLOTS, dtype=torch.bool), emb, pids)
    # identity 1 is in both micro-batches: its new slot is the mean over both, as in one batch
    torch.testing.assert_close(accumulated.memory, expected, rtol=1e-5, atol=1e-6)
    assert accumulated.filled.tolist() == filled.tolist() == [True, True, True, True, False]


def test_the_last_micro_batch_reads_a_new_slot_as_the_mean_of_the_step_so_far():
    """Identity 1 first appears in micro-batch 1; micro-batch 2's loss reads its slot as
    the mean over both micro-batches' samples (the value one batch would read)."""
    emb, pids, instructions = world(seed=4)
    one, two = new_loss(prefilled=False), new_loss(prefilled=False)
    x = emb.clone()
    one.train(), two.train()
    one({"embedding": x, "instruction_embedding": instructions}, make_batch(["x"] * 8, pids=pids))
    two({"embedding": x[:4], "instruction_embedding": instructions[:4]}, make_batch(["x"] * 4, pids=pids[:4]))
    two({"embedding": x[4:], "instruction_embedding": instructions[4:]}, make_batch(["x"] * 4, pids=pids[4:]))
    torch.testing.assert_close(two.memory, one.memory)


def test_evaluation_and_no_grad_forwards_leave_the_memory_alone():
    emb, pids, instructions = world()
    loss = new_loss(prefilled=True)
    before = loss.memory.clone()
    with torch.no_grad():
        loss({"embedding": emb, "instruction_embedding": instructions}, make_batch(["x"] * 8, pids=pids))
    loss.eval()
    loss({"embedding": emb, "instruction_embedding": instructions}, make_batch(["x"] * 8, pids=pids))
    loss.on_step_end()
    assert loss.memory.equal(before)
