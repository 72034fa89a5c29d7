"""core.training.distributed under 2 gloo processes (torchrun): the helpers DDP training
rests on (issue 19) — the gather with gradient (alone and with labels), the BatchNorm over every process's batch,
the mean of logged values whose keys differ by rank, an empty evaluation shard, a loss's
gather of outputs and labels (with the global batch's host copies)."""

import torch

SCRIPT = r'''
import sys
import torch
import torch.distributed as dist
from core.training import distributed as D

dist.init_process_group("gloo")
rank, out = dist.get_rank(), {}
g = torch.Generator().manual_seed(0)
full = torch.randn(7, 3, generator=g)             # the global batch; rank 0 holds 4 rows, rank 1 holds 3
lo, hi = (0, 4) if rank == 0 else (4, 7)
weights = torch.randn(7, 3, generator=g)

# gather with gradient: every process computes the global loss
x = full[lo:hi].clone().requires_grad_(True)
every = D.gather_with_grad(x)
(every.pow(2) * weights).sum().backward()
out["gathered"], out["gather_grad"] = every.detach(), x.grad

# features with their labels (a loss's x and pids): one count gather serves both
x = full[lo:hi].clone().requires_grad_(True)
every, labels = D.gather_with_labels(x, (torch.arange(7) * 5)[lo:hi])
(every.pow(2) * weights).sum().backward()
out["with_labels"] = (every.detach(), labels, x.grad)

# BatchNorm over every process's rows (unequal counts), loss local to each process
bn = D.GatheredBatchNorm(3).train()
with torch.no_grad():
    bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
x = full[lo:hi].clone().requires_grad_(True)
y = bn(x)
(y * weights[lo:hi]).sum().backward()
out["bn_out"], out["bn_grad"], out["bn_weight_grad"] = y.detach(), x.grad, bn.weight.grad
out["running"] = (bn.running_mean.clone(), bn.running_var.clone())

# logged values: keys differ by rank, Python numbers and tensors mixed
logged = {"loss": torch.tensor(1.0 + rank), "only0": 3.0} if rank == 0 else {"loss": torch.tensor(2.0), "only1": 5}
out["reduced"] = D.all_reduce_mean(logged)

# an evaluation shard without rows: (0, 0) on rank 1
local = torch.ones(1, 3) * 7 if rank == 0 else torch.zeros(0, 0)
out["rows"] = D.gather_rows(local, 1)

# a loss's gather: per-sample outputs (floating ones with gradient) and the labels, whose
# host copies are those of the global batch (the input checks read them)
from core.records import Batch
pids, roles = torch.arange(7) * 3, torch.tensor([0, 1, 0, 1, 1, 0, 0])
z = torch.zeros(hi - lo, dtype=torch.long)
batch = Batch(images=torch.zeros(hi - lo, 3, 2, 2), pids=pids[lo:hi], camids=z, categories=z + 1, domains=z,
              roles=roles[lo:hi], indices=torch.arange(lo, hi)).keep_host_copies()
x = full[lo:hi].clone().requires_grad_(True)
outs, gathered = D.gather_for_loss({"x": x, "flag": roles[lo:hi] == 1}, batch, ["x", "flag"])
(outs["x"].pow(2) * weights).sum().backward()
out["loss_x"], out["loss_flag"], out["loss_grad"] = outs["x"].detach(), outs["flag"], x.grad
out["loss_labels"] = {name: (getattr(gathered, name), torch.from_numpy(gathered.host(name).copy()),
                             gathered.host_copies[name][0] is getattr(gathered, name))
                      for name in ("pids", "categories", "roles", "indices")}
out["host_rows"] = D.gather_host({"texts": (roles[lo:hi] == 1).numpy()})["texts"].tolist()

# a training step's batch, known from the plans exchanged once (the trainer's way): every
# process's (indices, roles) of each step, the row counts and labels of the whole batch
# from them and the table, and gathers that exchange neither (the object collective is
# made to fail inside the step)
from types import SimpleNamespace
from core.data.loading import label_fields
table = SimpleNamespace(pids=pids.numpy(), camids=torch.zeros(7, dtype=torch.long).numpy(),
                        category_ids=torch.ones(7, dtype=torch.long).numpy(), domain_ids=torch.zeros(7).numpy())
plans = D.exchange_plans([(list(range(lo, hi)), roles[lo:hi].tolist()), ([hi - 1], [1])])
out["plans"] = [[(i.tolist(), r.tolist()) for i, r in step] for step in plans]
parts = plans[0]
import numpy as np
step = D.batch_rows([len(i) for i, _ in parts],
                    lambda: label_fields(table, np.concatenate([i for i, _ in parts]), np.concatenate([r for _, r in parts])))
exchanged = D.all_gather_objects
def refused(value):
    raise AssertionError("an object collective inside the step")
D.all_gather_objects = refused
with step:
    out["step_counts"] = D.batch_row_counts()
    x = full[lo:hi].clone().requires_grad_(True)
    every, labels = D.gather_with_labels(x, pids[lo:hi], D.batch_row_counts())
    (every.pow(2) * weights).sum().backward()
    out["step_gather"] = (every.detach(), labels, x.grad)
    x = full[lo:hi].clone().requires_grad_(True)
    outs, gathered = D.gather_for_loss({"x": x}, batch, ["x"])
    out["step_loss"] = (outs["x"].detach(), {name: gathered.host(name).tolist() for name in ("pids", "roles", "indices")})
    errors = []
    try:  # counts that are not this process's rows: refused on every process, before any collective
        D.gather_uneven(full[lo:hi], [hi - lo + 1] * 2)
    except ValueError as exc:
        errors.append(str(exc))
    try:  # a batch other than the step's (labels differ): refused
        other = Batch(images=batch.images, pids=pids[lo:hi] + 1, camids=z, categories=z + 1, domains=z,
                      roles=roles[lo:hi], indices=torch.arange(lo, hi)).keep_host_copies()
        D.gather_for_loss({"x": x}, other, ["x"])
    except ValueError as exc:
        errors.append(str(exc))
    out["step_errors"] = errors
D.all_gather_objects = exchanged
out["after_step"] = D.batch_row_counts()
torch.save(out, f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
'''


def test_distributed_helpers_under_two_processes(tmp_path, torchrun):
    script = tmp_path / "helpers.py"
    script.write_text(SCRIPT)
    torchrun(script, tmp_path, timeout=300)
    g = torch.Generator().manual_seed(0)
    full = torch.randn(7, 3, generator=g)
    weights = torch.randn(7, 3, generator=g)
    # one-process references
    x = full.clone().requires_grad_(True)
    (x.pow(2) * weights).sum().backward()
    gather_grad = x.grad
    bn = torch.nn.BatchNorm1d(3).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    x = full.clone().requires_grad_(True)
    y = bn(x)
    (y * weights).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r, (lo, hi) in zip(ranks, ((0, 4), (4, 7))):
        torch.testing.assert_close(r["gathered"], full)
        # every process computed the same global loss: the gather's backward sums them
        # (DDP then averages over the 2 processes: the one-process gradient)
        torch.testing.assert_close(r["gather_grad"], 2 * gather_grad[lo:hi])
        features, labels, grad = r["with_labels"]
        torch.testing.assert_close(features, full)
        assert labels.tolist() == (torch.arange(7) * 5).tolist()
        torch.testing.assert_close(grad, 2 * gather_grad[lo:hi])
        torch.testing.assert_close(r["bn_out"], y[lo:hi].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["bn_grad"], x.grad[lo:hi], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["running"][0], bn.running_mean)
        torch.testing.assert_close(r["running"][1], bn.running_var)
        assert r["reduced"] == {"loss": 1.5, "only0": 3.0, "only1": 5.0}
        torch.testing.assert_close(r["rows"], torch.ones(1, 3) * 7)
        torch.testing.assert_close(r["loss_x"], full)
        torch.testing.assert_close(r["loss_grad"], 2 * gather_grad[lo:hi])
        assert r["loss_flag"].tolist() == [False, True, False, True, True, False, False]
        want = {"pids": torch.arange(7) * 3, "categories": torch.ones(7, dtype=torch.long),
                "roles": torch.tensor([0, 1, 0, 1, 1, 0, 0]), "indices": torch.arange(7)}
        for name, (tensor, host, tied) in r["loss_labels"].items():
            assert torch.equal(tensor, want[name]) and torch.equal(host, want[name]) and tied, name
        assert r["host_rows"] == [False, True, False, True, True, False, False]
        # the plans, exchanged: each step's (indices, roles) of rank 0, then rank 1
        assert r["plans"] == [[([0, 1, 2, 3], [0, 1, 0, 1]), ([4, 5, 6], [1, 0, 0])], [([3], [1]), ([6], [1])]]
        assert r["step_counts"] == [4, 3] and r["after_step"] is None
        features, labels, grad = r["step_gather"]
        torch.testing.assert_close(features, full)
        assert labels.tolist() == (torch.arange(7) * 3).tolist()
        torch.testing.assert_close(grad, 2 * gather_grad[lo:hi])
        features, host = r["step_loss"]
        torch.testing.assert_close(features, full)
        assert host == {"pids": (torch.arange(7) * 3).tolist(), "roles": [0, 1, 0, 1, 1, 0, 0], "indices": list(range(7))}
        assert len(r["step_errors"]) == 2, r["step_errors"]
        assert "holds" in r["step_errors"][0] and f"process {0 if lo == 0 else 1}" in r["step_errors"][0]
        assert "'pids' differ" in r["step_errors"][1]
    torch.testing.assert_close(ranks[0]["bn_weight_grad"] + ranks[1]["bn_weight_grad"], bn.weight.grad,
                               atol=1e-5, rtol=1e-5)


def test_helpers_are_the_identity_outside_ddp():
    from core.training import distributed as D

    x = torch.rand(3, 2)
    assert D.gather_with_grad(x) is x
    labels = torch.arange(3)
    features, same_labels = D.gather_with_labels(x, labels)
    assert features is x and same_labels is labels
    assert D.all_reduce_mean({"a": 1, "b": torch.tensor(2.0)}) == {"a": 1.0, "b": 2.0}
    bn, plain = D.GatheredBatchNorm(2).train(), torch.nn.BatchNorm1d(2).train()
    torch.testing.assert_close(bn(x), plain(x))


def test_sync_batchnorm_leaves_the_batchnorms_of_declared_conditional_modules():
    """`trainer.sync_bn` converts every BatchNorm except inside the modules a component
    declares conditional (called on some ranks only: a synchronised one would deadlock)."""
    from torch import nn

    from core.interfaces import Head, Loss
    from core.training import distributed as D

    class TwoPathHead(Head):
        conditional_modules = ("text_bn",)

        def __init__(self):
            super().__init__()
            self.bn, self.text_bn = nn.BatchNorm1d(4), nn.BatchNorm1d(4)

    class Memory(Loss):
        shared_buffers = ("memory",)

        def __init__(self):
            super().__init__()
            self.register_buffer("memory", torch.zeros(3, 4))
            self.register_buffer("other", torch.zeros(1))

    net = nn.Module()
    net.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    net.head = TwoPathHead()
    net.losses = nn.ModuleList([Memory()])
    weight = net.head.bn.weight
    skip = D.component_declarations(net, "conditional_modules")
    assert skip == ["head.text_bn"]
    net = D.convert_sync_batchnorm(net, torch.device("cpu"), skip=skip)
    assert isinstance(net.backbone[1], D.GatheredBatchNorm) and isinstance(net.head.bn, D.GatheredBatchNorm)
    assert type(net.head.text_bn) is nn.BatchNorm1d
    assert net.head.bn.weight is weight  # the same parameters: optimizer and checkpoints unchanged
    assert D.shared_buffer_names(net) == ["losses.0.memory"]
