"""The instruct head under DDP with `sync_bn` (issue 19): two CPU processes (gloo, started
by torchrun) holding different kinds of rows — one process no text-only row at all —
give each row the output and the gradient of one process fed the whole batch, with the
same BatchNorm running statistics on both (the BatchNorms normalise every process's rows
together; a kind absent from the whole batch leaves its modules untouched everywhere)."""

import textwrap
from pathlib import Path

import torch

from core.context import BuildContext
from core.records import Batch
from core.training import distributed as D
from reid_instruct_editor.head import InstructHead

DIM = 6
#: has_image per row of the global batch of 7; rank 0 gets rows 0-2, rank 1 rows 3-6
CASES = {
    "texts_on_one_rank": [True, True, True, True, False, True, False],   # 2 text rows, both on rank 1
    "one_text_row": [True, True, True, False, True, True, True],         # 1 text row: running statistics
    "no_text_row": [True] * 7,                                           # text branch never called
    "no_image_on_rank_0": [False, False, False, True, False, True, True],
}
SHARDS = (slice(0, 3), slice(3, 7))

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_instruct_head_ddp import run_head

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.save(run_head(rank), f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
""")


def run_head(rank: int | None) -> dict:
    """Two training steps of a synchronised head on every case, on the global batch
    (rank None) or on `rank`'s shard; returns outputs, input gradients, parameter
    gradients (None: untouched) and buffers per case."""
    results = {}
    for name, kinds in CASES.items():
        torch.manual_seed(0)
        head = InstructHead(BuildContext(feature_dim=DIM), classifier=False)
        head = D.convert_sync_batchnorm(head, torch.device("cpu"))
        head.train()
        rows = slice(0, 7) if rank is None else SHARDS[rank]
        out_steps, grad_steps = [], []
        for step in range(2):
            g = torch.Generator().manual_seed(10 + step)
            feats = {k: torch.randn(7, DIM, generator=g)[rows].requires_grad_(True)
                     for k in ("bio", "clo", "global", "instruction_cls")}
            feats["has_image"] = torch.tensor(kinds)[rows]
            weights = torch.randn(7, 2 * DIM, generator=g)[rows]
            n = rows.stop - rows.start
            zeros = torch.zeros(n, dtype=torch.long)
            batch = Batch(images=torch.zeros(n, 3, 2, 2), pids=zeros, camids=zeros, categories=zeros,
                          domains=zeros, roles=zeros, indices=torch.arange(n))
            out = head(feats, batch)
            head.zero_grad(set_to_none=True)
            (out["embedding"] * weights).sum().backward()
            out_steps.append({k: v.detach() for k, v in out.items()})
            grad_steps.append({k: feats[k].grad for k in ("bio", "clo", "global", "instruction_cls")})
        results[name] = {"out": out_steps, "input_grads": grad_steps,
                         "param_grads": {k: p.grad for k, p in head.named_parameters()},
                         "buffers": {k: b.clone() for k, b in head.named_buffers()}}
    return results


def test_two_processes_normalise_as_one_process(tmp_path, torchrun):
    (tmp_path / "test_instruct_head_ddp.py").write_text(Path(__file__).read_text())
    script = tmp_path / "ddp_head.py"
    script.write_text(SCRIPT)
    torchrun(script, tmp_path, tmp_path, timeout=150)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    single = run_head(None)
    close = {"rtol": 1e-5, "atol": 1e-6}
    for name in CASES:
        one, (r0, r1) = single[name], (ranks[0][name], ranks[1][name])
        for step in range(2):
            for key, value in one["out"][step].items():
                torch.testing.assert_close(torch.cat([r0["out"][step][key], r1["out"][step][key]]), value, **close,
                                           msg=f"{name} step {step} output {key}")
            for key, value in one["input_grads"][step].items():
                got = [r["input_grads"][step][key] for r in (r0, r1)]
                got = torch.cat([g if g is not None else torch.zeros(3 if i == 0 else 4, DIM)
                                 for i, g in enumerate(got)])
                want = value if value is not None else torch.zeros(7, DIM)
                torch.testing.assert_close(got, want, **close, msg=f"{name} step {step} gradient of {key}")
        for key, value in one["param_grads"].items():
            got = [r["param_grads"][key] for r in (r0, r1)]
            if value is None:  # untouched in one process: untouched on every rank (no zero gradient)
                assert got == [None, None], f"{name}: {key} has a gradient"
                continue
            summed = sum(g for g in got if g is not None)  # DDP averages; the loss here is a sum per rank
            torch.testing.assert_close(summed, value, **close, msg=f"{name} gradient of {key}")
        for key, value in one["buffers"].items():
            torch.testing.assert_close(r0["buffers"][key], value, **close, msg=f"{name} buffer {key}")
            torch.testing.assert_close(r1["buffers"][key], value, **close, msg=f"{name} buffer {key}")
