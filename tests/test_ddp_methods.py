"""DDP trains the same method as one process (issue 19): for every first-party synthetic
pipeline, the losses of the first steps at world size 2 (2 CPU processes, gloo, started by
torchrun) equal the one-process losses on the same global batches — triplet mining, MOIL's
prototypes and alignment, HSE's meta-train statistics, the baselines' weighted triplet
(AGW) and the supervised contrastive loss, and the BatchNorm statistics
(`trainer.sync_bn`) are taken over the whole batch, and the updated weights follow, so
later steps agree too."""

import shutil

import pytest

from core.runner import run
from core.training.run_folder import read_metrics

from pipeline_twins import ALL, config_file, twin_config  # noqa: E402 - registered by conftest.py

#: steps compared per pipeline (and overrides); muva's first stage has 2 steps per epoch:
#: step 3 is stage 2's first. TransReID's stochastic depth draws its masks from each
#: process's RNG, so DDP cannot draw the one-process masks: compared without it.
STEPS = {"muva_synthetic": (3, ["stages.0.epochs=1"]), "transreid_synthetic": (2, ["backbone.drop_path_rate=0"]),
         "quickstart with supcon": (2, ["losses=[{name: ce}, {name: supcon}]"])}
#: every first-party pipeline, and the quickstart with the one whole-batch loss no pipeline uses
PIPELINES = [*ALL, "quickstart with supcon"]
#: pipelines whose losses are not yet the one-process losses under DDP: only that the
#: steps run is checked (none today; instruct-editor's head BatchNorms were, issue 19)
PER_PROCESS_BN: set[str] = set()


def _train_records(run_dir):
    return [r for r in read_metrics(run_dir) if r["event"] == "train"]


def _assert_same_logged_values(one, two):
    """Every value logged by the one-process run, also logged by the DDP run and equal to
    fp32 tolerance, step by step."""
    for a, b in zip(one, two):
        keys = [k for k in a if k not in ("images_per_s", "event", "stage", "epoch", "global_step", "lr")]
        assert set(keys) <= set(b), (set(keys) - set(b))
        got = {k: b[k] for k in keys}
        want = {k: a[k] for k in keys}
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), f"step {a['global_step']}"


#: how the DDP processes start: `core run` on the CPU, or core's CLI with the model on the
#: emulated separate device (core.separate_device), where a host tensor meeting the model's in
#: the DDP paths (the losses' gathers, the gathered BatchNorm, evaluation shards) fails as on
#: GPUs, and so does a collective given a host tensor (NCCL takes device tensors only; gloo,
#: which these processes use, would not say); there the untrained evaluation runs sharded first,
#: and training is fp32 as on the CPU (the pipelines' bf16 applies CUDA's autocast rules there)
LAUNCH = {"cpu": ("core", []),
          "separate device": ("core.on_separate_device", ["--set", "trainer.device=meta",
                                                          "--set", "trainer.eval_before=true",
                                                          "--set", "trainer.amp=none"])}


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """name -> (its config file, the train records of its one-process run): made once per
    pipeline and shared by both launches, whose one-process runs were the same (the launch
    changes only how the DDP processes start); labels (muva's prepare step) are written
    beside the config by that run, as before."""
    made = {}

    def get(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(name.replace(" ", "_"))
            steps, extra = STEPS.get(name, (2, []))
            config = config_file(name.split(" with ")[0], folder,
                                 [f"trainer.stop_after_steps={steps}", "trainer.sync_bn=true", *extra])
            made[name] = config, _train_records(run(config, run_dir=folder / "single").run_dir)
        return made[name]

    return get


@pytest.mark.parametrize("launch", sorted(LAUNCH))
@pytest.mark.parametrize("name", PIPELINES)
def test_two_processes_compute_the_one_process_losses(name, launch, tmp_path, torchrun, one_process_run):
    steps = STEPS.get(name, (2, []))[0]
    config, one = one_process_run(name)
    module, options = LAUNCH[launch]
    torchrun("-m", module, "run", config, *options, "--run-dir", tmp_path / "ddp", cwd=tmp_path)
    two = _train_records(tmp_path / "ddp")
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one] == list(range(1, steps + 1))
    if launch == "separate device":
        evaluated = [r["tag"] for r in read_metrics(tmp_path / "ddp") if r["event"] == "eval"]
        assert evaluated == ([] if name.startswith("irm") else ["baseline (untrained)"])  # irm twins: no test set
    if name in PER_PROCESS_BN:
        return
    _assert_same_logged_values(one, two)


def test_one_identity_per_process_still_mines_triplets_across_processes(tmp_path, torchrun):
    """P = 2 identities over 2 processes: each process holds one identity, no negative of
    its own (the triplet was 0 per process); gathered, the loss is the one-process loss."""
    config = twin_config("quickstart", tmp_path, ["trainer.stop_after_steps=1", "trainer.sync_bn=true",
                                                  "sampler.batch_size=8"])
    single = run(config, run_dir=tmp_path / "single")
    torchrun("-m", "core", "run", config, "--run-dir", tmp_path / "ddp", cwd=tmp_path)
    one, two = _train_records(single.run_dir)[0], _train_records(tmp_path / "ddp")[0]
    assert one["triplet"] > 0 and one["triplet/d_an"] > 0
    assert two["triplet"] == pytest.approx(one["triplet"], rel=1e-4, abs=1e-5)
    assert two["triplet/d_an"] == pytest.approx(one["triplet/d_an"], rel=1e-4, abs=1e-5)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("name", ["quickstart", "mgor_synthetic", "irm_synthetic"])
def test_compiled_training_under_ddp_computes_the_one_process_losses(name, tmp_path, torchrun):
    """`trainer.compile: true` under torchrun: the compiled training module at world size 2
    gives the one-process eager losses, and leaves no collective unwaited. Compiled, the
    losses' gathers became functional collectives inside inductor's graphs, and torch
    reported Work objects never waited at exit ("there are still 9 unwaited collective
    calls"); core.training.distributed keeps its collectives out of compiled graphs. The
    three twins call collectives inside the compiled module: the triplet's gathers, MOIL's
    and HSE's gathers and the gathered BatchNorm, instruct-editor's head's row counts
    (bench/ddp_compile.py runs every twin; ~90 s for irm with a cold compile cache)."""
    base = ["trainer.stop_after_steps=2", "trainer.sync_bn=true"]
    config = twin_config(name, tmp_path, base)
    (tmp_path / "compiled").mkdir()
    compiled = twin_config(name, tmp_path / "compiled", [*base, "trainer.compile=true"])
    single = run(config, run_dir=tmp_path / "single")
    proc = torchrun("-m", "core", "run", compiled, "--run-dir", tmp_path / "ddp", cwd=tmp_path, timeout=900)
    assert "unwaited" not in proc.stderr, proc.stderr[-4000:]
    one, two = _train_records(single.run_dir), _train_records(tmp_path / "ddp")
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one] == [1, 2]
    _assert_same_logged_values(one, two)
