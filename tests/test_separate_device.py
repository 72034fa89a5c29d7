"""The emulated separate device (core.separate_device, issue 19): its rules are CUDA's
(PyTorch docs, "CUDA semantics"; TensorIterator's CPU-scalar rule), it computes what the
CPU computes, and every first-party pipeline trains, evaluates and resumes on it, so
host/device mixing fails here before it fails a first GPU run."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.evaluation.blocked import blocked_per_query_metrics, blocked_topk
from core.separate_device import DeviceMixError, DeviceTensor, emulate_separate_device, emulation_for, host
from pipeline_twins import ALL, one_epoch_a_stage


@pytest.fixture
def device():
    with emulate_separate_device() as d:
        yield d


def test_a_step_on_the_device_computes_what_the_cpu_computes_and_grads_reach_the_parameters(device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    twin = copy.deepcopy(net).to(device)
    assert all(isinstance(p, DeviceTensor) for p in twin.parameters())
    assert all(isinstance(b, DeviceTensor) for b in twin.buffers())
    results = []
    for model, inputs, labels in ((net, x, y), (twin, x.to(device), y.to(device))):
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        opt.step()
        results.append((loss.item(), [host(g) for g in grads], [host(p.detach()) for p in model.parameters()]))
    assert all(isinstance(p.grad, DeviceTensor) for p in twin.parameters())
    (loss_a, grads_a, weights_a), (loss_b, grads_b, weights_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for a, b in zip(grads_a + weights_a, grads_b + weights_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


REFUSED = {
    # a logged Python number made on the host, stacked with device losses (issue 19 item 10)
    "stack with a host scalar": lambda d: torch.stack([torch.ones((), device=d), torch.tensor(1.0)]),
    "cat with a host vector": lambda d: torch.cat([torch.ones(2, device=d), torch.ones(2)]),
    "index_select with a host index": lambda d: torch.ones(4, device=d).index_select(0, torch.arange(2)),
    "gather with a host index": lambda d: torch.ones(4, 2, device=d).gather(1, torch.zeros(4, 1, dtype=torch.long)),
    "matmul with a host matrix": lambda d: torch.ones(2, 3, device=d) @ torch.ones(3, 2),
    "element-wise with a host vector": lambda d: torch.ones(3, device=d) + torch.arange(3),
    "mask from the host on a device tensor": lambda d: torch.ones(3, device=d).masked_fill(torch.ones(3).bool(), 0),
    "in-place into a host scalar": lambda d: torch.zeros(()).add_(torch.ones((), device=d)),
    "indexing a host tensor with device indices": lambda d: torch.ones(4)[torch.arange(2, device=d)],
    "a host generator for a device factory": lambda d: torch.randn(3, device=d, generator=torch.Generator()),
    "numpy of a device tensor": lambda d: torch.ones(2, device=d).numpy(),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cuda_refuses_is_refused(case, device):
    with pytest.raises((DeviceMixError, TypeError), match="host|numpy"):
        REFUSED[case](device)


ACCEPTED = {
    "host scalar in an element-wise op": lambda d: torch.ones(3, device=d) * torch.tensor(2.0),
    "host scalar as where's value": lambda d: torch.where(torch.ones(3, device=d) > 0, torch.ones(3, device=d),
                                                          torch.tensor(0.0)),
    "host indices": lambda d: torch.arange(4.0, device=d)[torch.tensor([3, 1])],
    "host indices to write": lambda d: torch.zeros(4, device=d).index_put_((torch.tensor([1]),),
                                                                           torch.ones(1, device=d)),
    "copy from the host": lambda d: torch.zeros(3, device=d).copy_(torch.arange(3.0)),
    "to and back": lambda d: torch.arange(3.0).to(d).cpu(),
    "copy to the host": lambda d: torch.zeros(3).copy_(torch.arange(3.0, device=d)),
    "a list index": lambda d: torch.arange(4.0, device=d)[[3, 1]],
    "a numpy index": lambda d: torch.arange(4.0, device=d)[np.array([3, 1])],
    "a list index to write": lambda d: _written(torch.zeros(4, device=d), [1], torch.ones(1, device=d)),
}


def _written(tensor, index, value):
    tensor[index] = value
    return tensor


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_cuda_accepts_from_the_host_is_accepted_and_computed(case, device):
    out = ACCEPTED[case](device)
    expected = {"host scalar in an element-wise op": [2.0, 2.0, 2.0], "host scalar as where's value": [1.0] * 3,
                "host indices": [3.0, 1.0], "host indices to write": [0.0, 1.0, 0.0, 0.0],
                "copy from the host": [0.0, 1.0, 2.0], "to and back": [0.0, 1.0, 2.0],
                "copy to the host": [0.0, 1.0, 2.0], "a list index": [3.0, 1.0], "a numpy index": [3.0, 1.0],
                "a list index to write": [0.0, 1.0, 0.0, 0.0]}[case]
    assert host(out).tolist() == expected
    assert isinstance(out, DeviceTensor) == (case not in ("to and back", "copy to the host"))


#: what makes the host wait for a CUDA device (CUDA semantics: a value read, an output the
#: data sizes, a copy to the host, a blocking copy from it, which PyTorch ends with a
#: stream synchronisation; host indices are copied over before indexing) -> counted as
SYNCS = {
    "item": (lambda x, h, d: x.sum().item(), "_local_scalar_dense"),
    "bool": (lambda x, h, d: bool(x.any()), "_local_scalar_dense"),
    "boolean mask": (lambda x, h, d: x[x > 0], "index (boolean mask)"),
    "nonzero": (lambda x, h, d: x.nonzero(), "nonzero"),
    "tolist": (lambda x, h, d: x.tolist(), "tolist"),
    "cpu": (lambda x, h, d: x.cpu(), "copy to the host"),
    "tensor from a number": (lambda x, h, d: torch.tensor(3.0, device=d), "blocking copy to the device"),
    "as_tensor from a list": (lambda x, h, d: torch.as_tensor([1, 2], device=d), "blocking copy to the device"),
    "to": (lambda x, h, d: h.to(d), "blocking copy to the device"),
    "copy_": (lambda x, h, d: x.clone().copy_(h), "blocking copy to the device"),
    "host index": (lambda x, h, d: x[torch.tensor([0, 2])], "index with host indices (copied to the device first)"),
    "list index": (lambda x, h, d: x[[0, 2]], "index with host indices (copied to the device first)"),
    "copy_ from a host copy of device data": (lambda x, h, d: x.clone().copy_(host(x).clone()),
                                              "blocking copy to the device"),
}
#: what does not: asynchronous copies, factories on the device, CPU scalars as kernel
#: arguments, device indices, and anything on host tensors alone
NO_SYNCS = {
    "to non_blocking": lambda x, h, d: h.to(d, non_blocking=True),
    "copy_ non_blocking": lambda x, h, d: x.clone().copy_(h, non_blocking=True),
    "full": lambda x, h, d: torch.full((), 3, device=d),
    "zeros": lambda x, h, d: torch.zeros(3, device=d),
    "CPU scalar operand": lambda x, h, d: x * torch.tensor(2.0),
    "where with a number": lambda x, h, d: torch.where(x > 0, x, 0.0),
    "device index": lambda x, h, d: x[x.argsort()[:2]],
    "dtype change": lambda x, h, d: x.to(torch.float16),
    "host item": lambda x, h, d: h.sum().item(),
    "host nonzero": lambda x, h, d: h.nonzero(),
    # a plain tensor over the device's memory, as DDP's reducer gets back from its
    # collectives (the gradient buckets): on a GPU the bucket itself, a copy within the device
    "copy_ from the device's memory": lambda x, h, d: x.clone().copy_(host(x)),
}


@pytest.mark.parametrize("case", sorted(SYNCS))
def test_what_waits_for_a_gpu_is_counted_as_a_host_sync(case, device):
    from core.separate_device import count_syncs

    make, kind = SYNCS[case]
    x, h = torch.randn(6).to(device), torch.randn(6)
    with count_syncs() as syncs:
        make(x, h, device)
    assert dict(syncs.by_op) == {kind: 1}


@pytest.mark.parametrize("case", sorted(NO_SYNCS))
def test_what_does_not_wait_for_a_gpu_is_not_counted(case, device):
    from core.separate_device import count_syncs

    x, h = torch.randn(6).to(device), torch.randn(6)
    with count_syncs() as syncs:
        NO_SYNCS[case](x, h, device)
    assert syncs.total == 0, dict(syncs.by_op)


def test_tensors_from_python_data_land_on_the_device_with_their_values(device):
    made = [torch.tensor([1, 2], device=device), torch.as_tensor([1.5], device=device),
            torch.as_tensor(np.arange(2), device=device), torch.ones(1, device=device).new_tensor([4.0])]
    assert all(isinstance(t, DeviceTensor) for t in made)
    assert [t.tolist() for t in made] == [[1, 2], [1.5], [0, 1], [4.0]]
    assert made[0].sum().item() == 3 and made[0].device == device


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_blocked_search_on_the_device_gives_the_host_results(metric):
    """The out-of-core search (float16 rows read block by block, as from the trainer's memory
    map) computing on a separate device: its host reads and device comparisons never mix,
    and every per-query result equals the host computation's."""
    rng = np.random.default_rng(0)
    q, g = (rng.standard_normal((n, 8)).astype(np.float16) for n in (40, 300))
    pids = rng.integers(0, 15, 40), rng.integers(0, 15, 300)
    cams = rng.integers(0, 3, 40), rng.integers(0, 3, 300)
    groups = {"q_groups": rng.integers(0, 2, 40), "g_groups": rng.integers(0, 2, 300)}
    args = (q, g, metric, pids[0], pids[1], cams[0], cams[1], True, 16, 64)
    on_host = blocked_per_query_metrics(*args, device="cpu", **groups)
    top_host = blocked_topk(q, g, metric, 5, 16, 64, device="cpu")
    with emulate_separate_device() as device:
        on_device = blocked_per_query_metrics(*args, device=device, **groups)
        top_device = blocked_topk(q, g, metric, 5, 16, 64, device=device)
    assert on_host.valid.sum() > 20
    for field in on_host.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(on_host, field), getattr(on_device, field), err_msg=field)
    for a, b in zip(top_host, top_device):
        np.testing.assert_array_equal(a, b)


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


#: the irm twins with half their people: an epoch of 13 steps, the six tasks in turn (each
#: task's step still taken in each stage, before and after a resume at step 3), where 26
#: made each run twice as long; what is checked does not depend on the epoch's length
IRM_HALF = ["data.train.0.world.identities=4"]


def _one_epoch_a_stage(name: str, folder, device: str):
    """pipeline `name` made small (`config_file`; the irm twins on half their people,
    IRM_HALF), one epoch a stage, on `device`, in fp32 (what the CPU trains in; the
    pipelines' bf16 applies CUDA's autocast rules on the emulated device); written into
    `folder`, self-contained."""
    fewer = IRM_HALF if name.startswith("irm") else []
    return one_epoch_a_stage(name, folder, [*fewer, f"trainer.device={device}", "trainer.amp=none"])


def _assert_same_first_step(cpu_records: list[dict], emulated_records: list[dict]) -> None:
    """The first training step's logged values on the emulated device: the CPU's."""
    first_cpu, first_emulated = (next(r for r in records if r["event"] == "train")
                                 for records in (cpu_records, emulated_records))
    for key, value in first_cpu.items():
        if key not in ("seconds", "images_per_s") and isinstance(value, float):
            assert first_emulated[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("name", ALL)
def test_every_pipeline_trains_and_evaluates_on_a_separate_device(name, tmp_path, one_torch_thread):
    """Each first-party pipeline (methods' twins and baselines), one epoch a stage through
    the trainer (batches moved, memories updated, NaN guard, evaluation, checkpoints) with
    the model on the emulated device: no host tensor meets a device tensor, and the first
    step logs what the same step logs on the CPU."""
    from core.runner import run

    runs = {}
    for device in ("cpu", "meta"):
        path = _one_epoch_a_stage(name, tmp_path / device, device)
        with emulation_for(device):
            runs[device] = run(path, [], run_dir=tmp_path / f"run-{device}")
    cpu, emulated = _records(runs["cpu"].run_dir), _records(runs["meta"].run_dir)
    assert "training on meta" in (runs["meta"].run_dir / "log.txt").read_text()
    assert [(r["event"], sorted(r)) for r in cpu] == [(r["event"], sorted(r)) for r in emulated]
    _assert_same_first_step(cpu, emulated)


class _LogsPythonNumbers(torch.nn.Module):
    """A user's loss as plugin authors write them: a Python number among its logged parts."""

    features = "features"

    def forward(self, outputs, batch):
        feats = outputs["features"]
        return feats.pow(2).mean(), {"batch_size": float(len(feats)), "norm": feats.norm(dim=1).mean()}


def test_a_loss_logging_python_numbers_trains_on_a_separate_device(register_component, tiny_pipeline_config,
                                                                    run_tiny_pipeline, separate_device):
    """The trainer makes a logged number a tensor on the loss's device before stacking the
    parts (issue 19 item 10: a host tensor there stops the first CUDA step)."""
    register_component("loss", "logs_numbers", _LogsPythonNumbers)
    config = tiny_pipeline_config
    config["losses"].append({"name": "logs_numbers", "weight": 0.1})
    config["trainer"].update(device="meta", log_every=1, eval_before=False)
    with separate_device():
        result = run_tiny_pipeline(config)
    train = [r for r in _records(result.run_dir) if r["event"] == "train"]
    assert len(train) == 4 and all(r["logs_numbers/batch_size"] == 16.0 for r in train)


@pytest.mark.parametrize("name", ["quickstart", "muva_synthetic", "irm_synthetic"])
def test_resume_on_a_separate_device_is_exact(name, tmp_path, one_torch_thread):
    """Stopped after 3 steps and resumed, on the emulated device: the checkpoint (weights,
    optimizer moments, memory banks, RNG) goes to the host and back onto the device, and
    the run ends with the losses of an uninterrupted one."""
    from core.runner import run

    path = _one_epoch_a_stage(name, tmp_path, "meta")
    with emulate_separate_device():
        full = run(path, [], run_dir=tmp_path / "full")
        stopped = run(path, ["trainer.stop_after_steps=3"], run_dir=tmp_path / "stopped")
        resumed = run(None, [], resume=stopped.run_dir)
    losses = lambda run_dir: [r["loss"] for r in _records(run_dir) if r["event"] == "train"]  # noqa: E731
    assert len(losses(full.run_dir)) > 3
    assert losses(full.run_dir) == losses(resumed.run_dir)


def test_fp16_resume_on_a_separate_device_is_exact(tmp_path, one_torch_thread):
    """fp16 on the emulated device (CUDA's autocast rules and the gradient scaler, as the
    trainer runs it on a GPU), stopped after 3 steps and resumed: the run logs the losses
    and skipped-step counts of an uninterrupted one and ends with its scaler state (the
    scale and its growth tracker are in the checkpoint, and so is the skipped count)."""
    from core.runner import run

    path = one_epoch_a_stage("quickstart", tmp_path, ["trainer.device=meta", "trainer.amp=null", "trainer.precision=fp16"])
    with emulate_separate_device():
        full = run(path, [], run_dir=tmp_path / "full")
        stopped = run(path, ["trainer.stop_after_steps=3"], run_dir=tmp_path / "stopped")
        resumed = run(None, [], resume=stopped.run_dir)
    logged = lambda run_dir: [(r["loss"], r["skipped_steps"]) for r in _records(run_dir) if r["event"] == "train"]  # noqa: E731
    assert len(logged(full.run_dir)) > 3
    assert logged(stopped.run_dir)[-1][1] >= 1  # a step was skipped before the stop: the scale had changed
    assert logged(full.run_dir) == logged(resumed.run_dir)
    scaler = lambda run_dir: torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["scaler"]  # noqa: E731
    assert scaler(full.run_dir) == scaler(resumed.run_dir) and scaler(full.run_dir)["scale"] < 2.0 ** 16


def test_the_emulated_device_outside_the_emulation_is_a_config_error(tiny_pipeline_config, run_tiny_pipeline):
    from core.config.loading import ConfigError

    tiny_pipeline_config["trainer"]["device"] = "meta"
    with pytest.raises(ConfigError, match="trainer.device.*emulate_separate_device"):
        run_tiny_pipeline(tiny_pipeline_config)


@pytest.mark.parametrize("loss", ["arcface", "cosface", "center", "supcon"])
def test_losses_no_pipeline_uses_train_on_a_separate_device(loss, tiny_pipeline_config, run_tiny_pipeline):
    """The registered losses outside every first-party pipeline (the test above covers the
    rest), in the tiny pipeline: the same first step as on the CPU."""
    config = tiny_pipeline_config
    config["losses"] = [{"name": "triplet"}, {"name": loss}]
    config["trainer"].update(log_every=1, eval_before=False, precision="fp32")  # the CPU's (see _one_epoch_a_stage)
    runs = {}
    for device in ("cpu", "meta"):
        config["trainer"]["device"] = device
        with emulation_for(device):
            runs[device] = run_tiny_pipeline(config, name=f"{device}.yaml")
    cpu, emulated = _records(runs["cpu"].run_dir), _records(runs["meta"].run_dir)
    assert any(key.startswith(loss) for key in next(r for r in cpu if r["event"] == "train"))
    _assert_same_first_step(cpu, emulated)


def test_the_tools_on_a_separate_device_give_the_cpu_results(run_tiny_pipeline, tiny_pipeline_config, tmp_path,
                                                              capsys):
    """`core extract` (float32 and `--half`), `core search` (in memory, memory-mapped,
    worst queries), `core explain` and `core eval` with the model on the emulated device:
    the embeddings, ranked lists and metrics of the same commands on the CPU."""
    from core.cli import main
    from core.data.synthetic import SyntheticWorld
    from core.data.synthetic.export import export_world

    tiny_pipeline_config["trainer"]["eval_before"] = False
    trained = str(run_tiny_pipeline(tiny_pipeline_config).run_dir)
    world = tiny_pipeline_config["data"]["train"][0]
    export_world(SyntheticWorld(**{k: v for k, v in world.items() if k != "dataset"}), tmp_path / "images")
    query = str(tmp_path / "images" / "query")
    printed = {}
    for device in ("cpu", "meta"):
        out = tmp_path / device
        commands = [
            ["extract", trained, "--images", "run:gallery", "--out", str(out / "g.npz")],
            ["extract", trained, "--images", str(tmp_path / "images" / "bounding_box_test"), "--half",
             "--out", str(out / "h.npz")],
            ["search", trained, "--query", query, "--gallery", str(out / "g.npz"), "--top", "5", "--out", str(out / "s")],
            ["search", trained, "--query", query, "--gallery", str(out / "h.npz"), "--top", "5", "--out", str(out / "t")],
            ["search", trained, "--worst", "3", "--top", "4"],
            ["explain", trained, "--images", query, "--out", str(out / "e"), "--limit", "4"]]
        capsys.readouterr()
        with emulation_for(device):
            for command in commands:
                assert main([*command, "--device", device]) == 0, command
            assert main(["eval", trained, "--set", f"trainer.device={device}", "--json"]) == 0
        printed[device] = capsys.readouterr().out
        assert len(list((out / "e").glob("*.png"))) == 4
    for name in ("g.npz", "h.npz"):
        with np.load(tmp_path / "cpu" / name) as a, np.load(tmp_path / "meta" / name) as b:
            assert sorted(a) == sorted(b)
            if "embeddings" in a:
                np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-5)
    # ranked lists, verdicts, APs and the evaluation's metrics as printed
    assert printed["cpu"].replace("cpu", "meta").replace(str(tmp_path / "cpu"), str(tmp_path / "meta")) == \
        printed["meta"]


VARIANTS = {
    "rerank": {"evaluator": {"name": "reid", "rerank": True}},
    "faiss_flat": {"evaluator": {"name": "reid", "search": "faiss_flat"}},
    "faiss_ivf": {"evaluator": {"name": "reid", "search": "faiss_ivf", "nlist": 2}},
    "faiss_ivfpq": {"evaluator": {"name": "reid", "search": "faiss_ivfpq", "nlist": 2, "pq_bits": 4}},
    "blocked euclidean": {"evaluator": {"name": "reid", "search": "blocked", "metric": "euclidean"}},
    "eval_flip": {"trainer": {"eval_flip": True}},
    "accumulate + grad_clip": {"trainer": {"accumulate": 2, "grad_clip": 1.0}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trainer_and_evaluator_settings_on_a_separate_device_give_the_cpu_metrics(variant, tiny_pipeline_config,
                                                                                  run_tiny_pipeline):
    """Settings no first-party pipeline uses, on the emulated device: the CPU's metrics
    (IVF-PQ's exact re-ranking mixed a host query with the device's gallery rows)."""
    pytest.importorskip("faiss")
    metrics = {}
    for device in ("cpu", "meta"):
        config = copy.deepcopy(tiny_pipeline_config)
        for section, change in VARIANTS[variant].items():
            config[section] = {**config[section], **change} if section == "trainer" else change
        config["trainer"].update(device=device, eval_before=False, precision="fp32")
        with emulation_for(device):
            metrics[device] = run_tiny_pipeline(config, name=f"{device}.yaml").metrics
    assert metrics["cpu"] and metrics["meta"] == pytest.approx(metrics["cpu"], abs=1e-6)


def test_the_instruction_evaluator_on_a_separate_device_gives_the_cpu_metrics(tmp_path, one_torch_thread):
    """instruct_reid (every task, task-specific and task-free galleries, mAP-tau's reference
    encoder, ITM re-ranking of each query's top 4) evaluating the irm twin's untrained
    model on the emulated device: the CPU's metrics (the pipeline test above trains the
    twin without a test set)."""
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer
    from pipeline_twins import twin_config

    test = ("data.test=[{dataset: instruct, world: {seed: 1, categories: [person], identities: 4, "
            "test_identities: 12, images_per_identity: 4, cameras: 4, render_size: [64, 32], clothes_changes: 2, "
            "captions: true, infrared_cameras: [3]}, instruction_size: [32, 32]}]")
    metrics = {}
    for device in ("cpu", "meta"):
        path = twin_config("irm_synthetic", tmp_path, [test, "evaluator.itm_rerank=4", f"trainer.device={device}"])
        torch.manual_seed(0)  # the same initial weights
        with emulation_for(device):
            pipeline = build_pipeline(load_pipeline(path), echo=lambda *_: None)
            trainer = Trainer(pipeline, RunFolder(tmp_path / f"run-{device}"))
            for module in trainer.net.modules():  # the ITM head counts as trained: it re-ranks
                if hasattr(module, "trained_steps"):
                    module.trained_steps.fill_(1)
            metrics[device] = trainer.evaluate("untrained")
    assert len(metrics["cpu"]) > 100 and any(key.endswith("mAP_tau") for key in metrics["cpu"])
    assert [v for k, v in metrics["cpu"].items() if k.endswith("itm_reranked")] == [1.0]  # the ITM head re-ranked
    assert metrics["meta"] == pytest.approx(metrics["cpu"], abs=1e-6)


def test_moving_to_the_host_copies_also_under_inference_mode(device):
    """`.to("cpu")` of a device tensor is a new host tensor (under inference mode torch's
    `.to` may return its input; the emulation must not hand out the device's own data)."""
    for context in (contextlib.nullcontext(), torch.inference_mode()):
        with context:
            on_device = torch.arange(3.0).to(device=device, dtype=torch.float32)
            on_host = on_device.to("cpu")
            on_host.add_(1)
            assert not isinstance(on_host, DeviceTensor)
            assert on_device.tolist() == [0.0, 1.0, 2.0]
