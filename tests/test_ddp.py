"""DDP started by torchrun: 2 CPU processes (gloo) with the same global batch give the same
loss curve and weights as one process, and only rank 0 writes the run folder."""

import pytest
import torch
import yaml

from core.runner import run
from core.training.checkpoint import load_checkpoint
from core.training.run_folder import read_metrics


@pytest.fixture
def ddp_pipeline(ddp_pipeline_file):
    return ddp_pipeline_file("ddp.yaml", epochs=2)


def test_two_processes_match_one_process_with_the_same_global_batch(ddp_pipeline, tmp_path, torchrun):
    single = run(ddp_pipeline, run_dir=tmp_path / "single")
    torchrun("-m", "core", "run", ddp_pipeline, "--run-dir", tmp_path / "ddp")

    curve = lambda d: [(r["global_step"], r["loss"]) for r in read_metrics(d) if r["event"] == "train"]  # noqa: E731
    one, two = curve(single.run_dir), curve(tmp_path / "ddp")
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) == 8  # rank 0 logged each step once
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=1e-4)

    a = load_checkpoint(single.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    evals = lambda d: [r for r in read_metrics(d) if r["event"] == "eval"]  # noqa: E731
    assert evals(tmp_path / "ddp")[0]["synthetic/mAP"] == pytest.approx(evals(single.run_dir)[0]["synthetic/mAP"], abs=0.5)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == \
        ["checkpoints", "curves.png", "environment.json", "log.txt", "metrics.jsonl", "pipeline.yaml", "report.md"]
    # one log (#26): rank 0's messages, marked with the rank; other ranks add warnings only
    log = (tmp_path / "ddp" / "log.txt").read_text().splitlines()
    assert any("INFO    [rank 0] core.training.trainer: tiny: training on cpu (2 processes)" in line for line in log)
    assert all(" INFO " not in line and " DEBUG " not in line for line in log if "[rank 1]" in line)


GATHER_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from core.training import distributed as D

dist.init_process_group("gloo")
rank = dist.get_rank()
rows = torch.arange(2 + 3 * rank, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0]) + 100 * rank
ids = torch.arange(2 + 3 * rank) + 10 * rank
empty = torch.zeros(0, 2) if rank == 0 else torch.ones(1, 2)  # a process may hold no row
torch.save({"rows": D.gather_uneven(rows), "ids": D.gather_uneven(ids), "empty": D.gather_uneven(empty)},
           f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_gather_uneven_concatenates_every_process_rows_in_rank_order(tmp_path, torchrun):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    torchrun(script, tmp_path, timeout=300)
    expected_rows = torch.cat([torch.arange(2.0)[:, None] * torch.tensor([1.0, -1.0]),
                               torch.arange(5.0)[:, None] * torch.tensor([1.0, -1.0]) + 100])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["rows"], expected_rows)
        assert got["ids"].tolist() == [0, 1, 10, 11, 12, 13, 14]
        assert torch.equal(got["empty"], torch.ones(1, 2))
    # outside DDP it is the tensor itself
    from core.training.distributed import gather_uneven
    x = torch.rand(3, 2)
    assert gather_uneven(x) is x


def test_resume_at_world_size_two_is_exact_with_per_rank_rng(ddp_pipeline, tmp_path, torchrun):
    """Dropout draws from each process's own RNG: the checkpoint holds every rank's RNG
    state and each rank restores its own, so a run stopped and resumed on two processes
    ends bit-identical to one that never stopped; the ranks' dropout masks differ."""
    config = yaml.safe_load(ddp_pipeline.read_text())
    config["backbone"]["model_kwargs"].update(drop_rate=0.3, proj_drop_rate=0.3)
    ddp_pipeline.write_text(yaml.safe_dump(config))
    core_run = ("-m", "core", "run")
    torchrun(*core_run, ddp_pipeline, "--run-dir", tmp_path / "whole", cwd=tmp_path)
    torchrun(*core_run, ddp_pipeline, "--run-dir", tmp_path / "split", "--set", "trainer.stop_after_steps=3", cwd=tmp_path)
    rngs = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["rng_per_rank"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    # the pipeline imports a local plugin file: resuming needs it allowed (core/trust.py)
    torchrun(*core_run, "--resume", tmp_path / "split", "--allow-plugin-files", cwd=tmp_path)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


SHARED_BUFFER_SPY = '''
import json

import torch
import torch.distributed as dist

from core.hookspecs import hookimpl


@hookimpl
def on_step_end(trainer, step):
    """Rank 1's copy of the first floating buffer the components declare shared made
    different after step 1; both copies compared after step 2 (whose forward is where
    DDP broadcasts rank 0's buffers)."""
    from core.training.distributed import shared_buffer_names

    buffers = dict(trainer.net.named_buffers())
    name = next(n for n in shared_buffer_names(trainer.net) if buffers[n].is_floating_point())
    memory = buffers[name]
    if step == 1 and dist.get_rank() == 1:
        memory.add_(1.0)
    if step == 2:
        copies = [torch.empty_like(memory) for _ in range(dist.get_world_size())]
        dist.all_gather(copies, memory.contiguous())
        if dist.get_rank() == 0:
            (trainer.run.path / "spy.json").write_text(json.dumps({"buffer": name,
                                                                   "equal": torch.equal(copies[0], copies[1])}))
'''


def test_buffers_the_components_declare_shared_are_not_broadcast_each_step(tmp_path, torchrun):
    """A memory that every rank updates from the gathered batch (the IRM twin's text-to-
    image queues, declared in `shared_buffers`) is left out of DDP's per-step broadcast of
    rank 0's buffers (issue 19 item 8: ~18 MB a step for a memory bank on Market): a
    difference planted in rank 1's copy survives the next step, where DDP would have
    overwritten it."""
    from pipeline_twins import config_file

    (tmp_path / "spy.py").write_text(SHARED_BUFFER_SPY)
    path = config_file("irm_synthetic", tmp_path, ["trainer.stop_after_steps=2", "plugins=[./spy.py]"])
    torchrun("-m", "core", "run", path, "--run-dir", tmp_path / "run", cwd=tmp_path)
    seen = yaml.safe_load((tmp_path / "run" / "spy.json").read_text())
    assert seen["buffer"].startswith("losses.") and seen["equal"] is False, seen
