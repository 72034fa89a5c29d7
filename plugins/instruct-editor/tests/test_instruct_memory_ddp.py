"""The IRM++ memory bank under DDP: two CPU processes (gloo, started by torchrun) with
uneven shards of one global batch end with the same memory on both ranks, equal to one
process fed the whole batch (the update gathers every process's samples)."""

import textwrap
from pathlib import Path

import torch

from reid_instruct_editor.memory import IRMMemoryLoss

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from conftest import build_ctx, make_batch
    from test_instruct_memory_ddp import global_batch, run_steps

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rows = slice(0, 2) if rank == 0 else slice(2, 7)  # uneven shards of the global batch
    loss = run_steps(build_ctx, make_batch, rows)
    torch.save({"memory": loss.memory, "filled": loss.filled}, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
""")


def global_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 4, generator=g), [0, 0, 1, 2, 2, 3, 1], torch.randn(7, 5, generator=g)


def run_steps(build_ctx, make_batch, rows: slice) -> IRMMemoryLoss:
    """Three training steps of the memory loss on the `rows` of the global batch."""
    emb, pids, instructions = global_batch()
    loss = IRMMemoryLoss(build_ctx(num_identities=5), dim=4)
    for step in range(3):
        outputs = {"embedding": emb[rows] * (step + 1) + step, "instruction_embedding": instructions[rows]}
        loss(outputs, make_batch(["x"] * len(pids[rows]), pids=pids[rows]))
        loss.on_step_end()
    return loss


def test_two_processes_keep_one_memory_equal_to_a_single_process(tmp_path, build_ctx, make_batch, torchrun):
    (tmp_path / "test_instruct_memory_ddp.py").write_text(Path(__file__).read_text())
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    script = tmp_path / "ddp_memory.py"
    script.write_text(SCRIPT)
    torchrun(script, tmp_path, tmp_path, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    single = run_steps(build_ctx, make_batch, slice(0, 7))
    assert torch.equal(ranks[0]["memory"], ranks[1]["memory"]) and torch.equal(ranks[0]["filled"], ranks[1]["filled"])
    assert ranks[0]["filled"].tolist() == [True, True, True, True, False]  # identities 0-3 seen, 4 never
    torch.testing.assert_close(ranks[0]["memory"], single.memory, rtol=1e-6, atol=1e-6)
