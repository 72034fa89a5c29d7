"""Ablation sweeps (--grid, --seeds, one comparison table) and `core eval`."""

import csv
import copy

import numpy as np
import pytest
import torch
import yaml

from core import sweep
from core.config.loading import ConfigError
from core.interfaces import Labeler
from core.models.bnneck import BNNeckHead
from core.cli import main
from core.runner import evaluate_run, run
from core.testing import TINY_PIPELINE
from core.training.run_folder import read_metrics


@pytest.fixture
def tiny_yaml(tmp_path):
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def final_map(run_dir):
    return [r for r in read_metrics(run_dir) if r["event"] == "eval"][-1]["synthetic/mAP"]


def test_two_by_two_grid_with_two_seeds_writes_one_table(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["run", str(tiny_yaml), "--grid", "sampler.k=2,4", "--grid", "losses.1.margin=0.1,0.3",
                 "--seeds", "0,1", "--sweep-dir", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["variant"] for r in rows] == [
        "tiny sampler.k=2 losses.1.margin=0.1", "tiny sampler.k=2 losses.1.margin=0.3",
        "tiny sampler.k=4 losses.1.margin=0.1", "tiny sampler.k=4 losses.1.margin=0.3"]
    for row in rows:
        folder = out / sweep._slug(row["variant"])
        values = [final_map(folder / f"seed-{s}") for s in (0, 1)]
        assert row["seeds_ok"] == "2" and row["status"] == "ok"
        assert float(row["synthetic/mAP mean"]) == pytest.approx(np.mean(values), abs=1e-4)
        assert float(row["synthetic/mAP std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    seeds = [yaml.safe_load((out / sweep._slug(rows[0]["variant"]) / f"seed-{s}" / "pipeline.yaml").read_text())["seed"]
             for s in (0, 1)]
    assert seeds == [0, 1]
    table = (out / "comparison.md").read_text()
    assert "| tiny sampler.k=4 losses.1.margin=0.3 | 2 |" in table and " ± " in table
    assert table in capsys.readouterr().out


def test_a_failing_variant_is_reported_and_the_others_run_and_without_seeds_names_no_seed(
        tiny_yaml, tmp_path, capsys, monkeypatch):
    """A variant that fails as it runs (a crash here) is reported in its row and the others
    run. Without --seeds each run uses its pipeline's own `seed:`; its warning and status
    said 'seed None' and the csv's seeds column 'None', a seed no run had: they name none."""
    import core.runner

    real_run = core.runner.run

    def run(pipeline, overrides, **kwargs):
        if "sampler.k=2" in overrides:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real_run(pipeline, overrides, **kwargs)

    monkeypatch.setattr(core.runner, "run", run)
    out = tmp_path / "sweep"
    assert main(["run", str(tiny_yaml), "--grid", "sampler.k=2,4", "--sweep-dir", str(out)]) == 1
    rows = {r["variant"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert rows["tiny sampler.k=2"]["status"] == "failed: RuntimeError: CUDA error: an illegal memory access"
    assert rows["tiny sampler.k=4"]["status"] == "ok" and rows["tiny sampler.k=4"]["seeds_ok"] == "1"
    assert rows["tiny sampler.k=4"]["seeds"] == ""
    err = capsys.readouterr().err
    assert "warning: tiny sampler.k=2: FAILED: RuntimeError: CUDA error" in err and "None" not in err, err
    assert "None" not in (out / "comparison.md").read_text()


def test_grid_values_keep_commas_inside_brackets():
    assert sweep.split_values("[64, 32],[128, 64]") == ["[64, 32]", "[128, 64]"]
    assert sweep.parse_grid(["data.transform.size=[64, 32],[32, 16]"]) == [
        ["data.transform.size=[64, 32]", "data.transform.size=[32, 16]"]]


def test_a_grid_value_given_twice_is_refused():
    """`--grid sampler.k=2,2` ran the same variant twice, the second row labelled
    'tiny sampler.k=2 (tiny.yaml)' as if from another file."""
    with pytest.raises(ConfigError, match=r"^--grid: 'sampler.k=2,4,2' gives 2 twice; give each value once$"):
        sweep.parse_grid(["sampler.k=2,4,2"])


def test_eval_reproduces_the_final_metrics_of_a_run(tiny_yaml, tmp_path):
    result = run(tiny_yaml, run_dir=tmp_path / "run")
    assert evaluate_run(result.run_dir) == pytest.approx(result.metrics)
    checkpoint = result.run_dir / "checkpoints" / "last.pt"
    flipped = evaluate_run(checkpoint, ["trainer.eval_flip=true", "evaluator.metric=euclidean"])
    assert set(flipped) == set(result.metrics) and flipped != pytest.approx(result.metrics)


def test_eval_of_a_folder_without_a_run_names_what_it_expects(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no pipeline.yaml" in capsys.readouterr().err


def test_a_signal_stops_the_whole_sweep_after_writing_the_table_so_far(tmp_path, monkeypatch):
    """SIGINT/SIGTERM in one run (the trainer raises Interrupted after saving) ends the
    sweep: the next seeds are not started, the table of what finished is written, and the
    exception reaches the CLI (exit 130/143)."""
    import core.runner
    from core.training.interrupt import Interrupted

    calls = []

    def fake_run(pipeline, overrides, run_dir, image_check, **_):
        calls.append(overrides[-1])
        if len(calls) == 2:
            raise Interrupted(15, 0, 3, run_dir)
        run_dir.mkdir(parents=True)
        return type("Result", (), {"metrics": None})()

    monkeypatch.setattr(core.runner, "run", fake_run)
    monkeypatch.setattr(sweep, "check_variants", lambda variants: None)  # the pipeline files are not there
    variants = [sweep.Variant("a", tmp_path / "p.yaml", [], [0, 1, 2]), sweep.Variant("b", tmp_path / "p.yaml", [], [0])]
    with pytest.raises(Interrupted):
        sweep.run_sweep(variants, tmp_path / "sweep")
    assert calls == ["seed=0", "seed=1"]
    assert variants[0].errors == ["seed 1: interrupted"]
    assert (tmp_path / "sweep" / "comparison.md").is_file()


def _row(out, variant):
    return next(r for r in csv.DictReader((out / "comparison.csv").open()) if r["variant"] == variant)


def test_continue_reads_finished_runs_back_resumes_a_stopped_one_and_runs_the_rest(tiny_yaml, tmp_path):
    """`core run --continue`: a sweep stopped part-way goes on. Seed 0 finished (its folder
    must stay byte-identical: not run again), seed 1 stopped after 2 steps with a checkpoint
    (resumed: it must end where an uninterrupted seed-1 run ends), seed 2 never started
    (run). The row's mean is the mean of the three runs' own final mAP."""
    out = tmp_path / "sweep"
    assert main(["run", str(tiny_yaml), "--seeds", "0", "--sweep-dir", str(out)]) == 0
    row_dir = out / "tiny"
    before = {p.name: p.read_bytes() for p in (row_dir / "seed-0").iterdir() if p.is_file()}
    run(tiny_yaml, ["seed=1", "trainer.stop_after_steps=2"], run_dir=row_dir / "seed-1")
    assert sweep.finished_metrics(row_dir / "seed-1") is None
    assert (row_dir / "seed-1" / "checkpoints" / "last.pt").is_file()
    reference = run(tiny_yaml, ["seed=1"], run_dir=tmp_path / "uninterrupted")

    assert main(["run", str(tiny_yaml), "--seeds", "0,1,2", "--sweep-dir", str(out), "--continue"]) == 0
    after = {p.name: p.read_bytes() for p in (row_dir / "seed-0").iterdir() if p.is_file()}
    assert after == before
    assert "resumed at epoch 1/1, step 2" in (row_dir / "seed-1" / "log.txt").read_text()  # not rerun
    assert final_map(row_dir / "seed-1") == pytest.approx(reference.metrics["synthetic/mAP"], abs=1e-9)
    finals = [final_map(row_dir / f"seed-{s}") for s in (0, 1, 2)]
    row = _row(out, "tiny")
    assert int(row["seeds_ok"]) == 3
    assert float(row["synthetic/mAP mean"]) == pytest.approx(np.mean(finals), rel=1e-5)  # the csv keeps 6 digits


def test_continue_refuses_a_folder_holding_another_pipelines_run(tiny_yaml, tmp_path):
    """A run made from a different resolved pipeline (here another margin) is never mixed
    into the row: the sweep refuses, before any run, with the folder and the differing key,
    and the folder and the sweep's table are left as they were (the table was replaced by
    one of failures, each variant failing in turn)."""
    out = tmp_path / "sweep"
    assert main(["run", str(tiny_yaml), "--seeds", "0", "--sweep-dir", str(out)]) == 0
    before = (out / "tiny" / "seed-0" / "metrics.jsonl").read_bytes()
    table = (out / "comparison.md").read_bytes()
    variants = sweep.plan([tiny_yaml], ["losses.1.margin=0.7"], [], "0")
    with pytest.raises(ConfigError, match=r"seed-0 holds a run of a different pipeline \(differs in: losses\)"):
        sweep.run_sweep(variants, out, continue_sweep=True)
    assert (out / "tiny" / "seed-0" / "metrics.jsonl").read_bytes() == before
    assert (out / "comparison.md").read_bytes() == table


def test_a_sweep_dir_holding_a_sweep_a_file_or_seeds_given_twice_are_refused_before_any_run(
        tiny_yaml, tmp_path, capsys, monkeypatch):
    """Without --continue, a --sweep-dir that holds an earlier sweep is refused (each run
    failed with 'already holds a run ... --overwrite', which a sweep has not, and its
    comparison.md was replaced by that table of failures); a --sweep-dir that is a file,
    and --seeds naming a seed twice (one folder per seed: the second run was refused),
    are one line each, exit 2; no run starts."""
    import core.runner

    out = tmp_path / "sweep"
    assert main(["run", str(tiny_yaml), "--seeds", "0", "--sweep-dir", str(out)]) == 0
    table = (out / "comparison.md").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(core.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    (tmp_path / "a_file").write_text("")
    for args, expected in (
            (["--seeds", "0,1", "--sweep-dir", str(out)], "already holds a sweep (comparison.md, tiny/seed-0); "
                                                          "go on with it with --continue"),
            (["--seeds", "0,1", "--sweep-dir", str(tmp_path / "a_file")], "a_file is a file; give a folder"),
            (["--seeds", "0,1,0", "--sweep-dir", str(tmp_path / "new")], "--seeds: seed 0 is given twice")):
        assert main(["run", str(tiny_yaml), *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert (out / "comparison.md").read_bytes() == table
    assert not (tmp_path / "new").exists()


def test_continue_needs_a_sweep(tiny_yaml, tmp_path):
    with pytest.raises(SystemExit, match="--sweep-dir"):
        main(["run", str(tiny_yaml), "--seeds", "0,1", "--continue"])
    with pytest.raises(SystemExit, match="--resume"):
        main(["run", str(tiny_yaml), "--continue", "--sweep-dir", str(tmp_path / "s")])


@pytest.mark.parametrize("grid, expected", [
    ("losses.5.weight=1,2", "--grid: losses.5: '5' is out of range: 'losses' is a list of 2 items (0..1) "
                            "(from --grid losses.5.weight=1)"),
    ("sampler.k.x=1,2", "--grid: sampler.k.x: cannot set 'sampler.k.x'")])
def test_a_grid_key_that_cannot_be_set_is_refused_before_any_run(tiny_yaml, tmp_path, capsys, monkeypatch,
                                                                  grid, expected):
    """It failed each variant in turn as it started (multi-line warnings, a table of failures,
    exit 1), told as `--set`; now one line naming --grid, exit 2, no run."""
    import core.runner

    monkeypatch.setattr(core.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    assert main(["run", str(tiny_yaml), "--grid", grid, "--sweep-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_a_refusal_met_as_a_variant_runs_is_one_warning_line_told_as_grid(tiny_yaml, tmp_path, capsys, monkeypatch):
    """A refusal the check before the first run cannot see (check_variants left out here; a
    `prepare:` labeler's key, say: no labeler is built there) still fails its variant alone,
    its warning one line told as --grid's (it was told as `--set`, with three traceback lines
    after it); every run failing so, the sweep exits 2 as each would."""
    monkeypatch.setattr(sweep, "check_variants", lambda variants: None)
    out = tmp_path / "sweep"
    assert main(["run", str(tiny_yaml), "--grid", "sampler.kk=2,4", "--sweep-dir", str(out)]) == 2
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "FAILED" in line]
    assert len(warnings) == 2 and all("ConfigError: --grid: sampler.kk: unknown key 'kk'" in w for w in warnings), err
    assert "(from --grid sampler.kk=4)" in warnings[1] and "Traceback" not in err and "File \"" not in err, err
    assert "--grid: sampler.kk" in _row(out, "tiny sampler.kk=2")["status"]


@pytest.mark.parametrize("grid, variant, refusal, fixed", [
    ("sampler.name=pk,random", "variant 2/2 'tiny sampler.name=random'",
     "sampler.k: unknown key 'k' for sampler 'random'",
     "sampler={name: pk, batch_size: 16, k: 4},{name: random, batch_size: 16}"),
    ("losses.1.margin=0.3,wide", "variant 2/2 'tiny losses.1.margin=wide'",
     "--grid: losses.1.margin: wrong type for loss 'triplet'", "losses.1.margin=0.3,0.5"),
    ("stages.0.trainable=[backbone.*],[bakbone.*]", "variant 2/2 'tiny stages.0.trainable=[bakbone.*]'",
     "stages.0.trainable.0: stage 'main': trainable pattern 'bakbone.*' matches no parameter",
     "stages.0.trainable=[backbone.*],[head.*]")])
def test_a_variant_a_component_refuses_is_refused_before_any_run_and_by_print_config(
        tiny_yaml, tmp_path, capsys, monkeypatch, grid, variant, refusal, fixed):
    """`--grid sampler.name=pk,random` trained the pk variant to the end, and only then did
    'random' fail on pk's `k`; `--print-config`, the way to check a grid, printed it without a
    word: grid points were only loaded, never built. Each variant is now built the cheap way
    before the first run: an unknown key, a wrong type, a stage pattern matching nothing is
    one line naming the variant and the key, exit 2, nothing run, nothing printed; the grid
    written as it should be passes."""
    import core.runner

    monkeypatch.setattr(core.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    for flags in (["--sweep-dir", str(tmp_path / "s")], ["--print-config"]):
        assert main(["run", str(tiny_yaml), "--grid", grid, *flags]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"error: {variant}: ") and refusal in captured.err, captured.err
        assert captured.err.count("\n") == 1 and captured.out == "", captured
    assert not (tmp_path / "s").exists()
    assert main(["run", str(tiny_yaml), "--grid", fixed, "--print-config"]) == 0
    assert capsys.readouterr().out.count("# variant ") == 2


def test_planning_and_checking_a_sweep_loads_each_variants_pipeline_once(tiny_yaml, tmp_path, monkeypatch):
    """plan loaded each pipeline for its name, then each grid point; check_variants loaded every
    variant again. Now the variant keeps what plan loaded: every (file, overrides) is loaded
    once, and each variant's config is its pipeline with its overrides (as a fresh load gives
    it). Seen failing before: both grid points, and the pipeline without a grid, loaded twice."""
    real = sweep.load_pipeline
    loads = []

    def counted(path, overrides=(), *args, **kwargs):
        loads.append((str(path), tuple(overrides)))
        return real(path, overrides, *args, **kwargs)

    monkeypatch.setattr(sweep, "load_pipeline", counted)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_yaml.read_text())
    variants = sweep.plan([tiny_yaml, other], ["trainer.log_every=1"], ["losses.1.margin=0.3,0.5"], "0,1")
    sweep.check_variants(variants)
    assert len(variants) == 4 and len(loads) == len(set(loads)) == 2 + 4, loads
    for variant in variants:
        assert variant.config.data == real(variant.pipeline, variant.overrides).data
    loads.clear()
    variants = sweep.plan([tiny_yaml], [], [], "0,1")
    sweep.check_variants(variants)
    assert loads == [(str(tiny_yaml), ())]


class ComputingHead(BNNeckHead):
    """BNNeck that computes with a tensor at build, as hse's head and amsa's prompts do: the
    meta device cannot build it (`how`: numpy of a meta tensor is a TypeError, which the
    builder tells as bad input; `.item()` of one a RuntimeError)."""

    how = "numpy"

    def __init__(self, ctx, embedding: str = "bn") -> None:
        super().__init__(ctx, embedding=embedding)
        ones = torch.ones(2)
        self.count = int(np.asarray(ones).sum()) if self.how == "numpy" else int(ones.sum().item())


@pytest.mark.parametrize("how", ["numpy", "item"])
def test_a_model_part_the_meta_device_cannot_build_is_checked_built_for_real(
        tiny_yaml, capsys, monkeypatch, register_component, how):
    """A variant whose head cannot be built on the meta device is not refused for it (a fine
    grid passes), and a refusal by a part built after it (a loss) is still found before any
    run: the check builds that variant for real instead, and says so in one line per
    variant naming the head, its plugin and the reason (a plugin author learns why the
    sweep's check is slow; it was silent)."""
    monkeypatch.setattr(ComputingHead, "how", how)
    register_component("head", "computing", ComputingHead)
    grid = ["--set", "head.name=computing", "--print-config", "--grid"]
    reason = {"numpy": "(TypeError: can't convert meta device type tensor to numpy",
              "item": "(RuntimeError: Tensor.item() cannot be called on meta tensors)"}[how]
    assert main(["run", str(tiny_yaml), *grid, "losses.1.margin=0.3,0.5"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "meta device" in line]
    assert len(notes) == 2, notes
    for note in notes:
        assert note.startswith(f"{tiny_yaml}: head: head 'computing' (plugin test:head:computing) cannot be "
                               f"built on the meta device {reason}"), note
        assert "checking by a real build instead" in note and "docs/writing-plugins.md" in note, note
    assert main(["run", str(tiny_yaml), *grid, "losses.1.margin=0.3,wide"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all("cannot be built on the meta device" in line for line in err[:2]), err
    assert err[2].startswith("error: variant 2/2 'tiny losses.1.margin=wide': --grid: losses.1.margin: wrong type"), err


def test_a_dataset_that_cannot_be_built_is_refused_without_a_real_build_or_a_meta_note(
        tiny_yaml, tmp_path, capsys, monkeypatch):
    """Datasets are not built on the meta device, so a dataset's refusal (its root is not
    there) is the run's refusal: it was told as 'cannot be built on the meta device ...
    checking by a real build instead (slow: model initialised, weights read)' and the whole
    pipeline was built a second time to say the same. Now one line, no second build."""
    from core import parameter_check

    builds = []
    real = parameter_check._quiet_build
    monkeypatch.setattr(parameter_check, "_quiet_build", lambda cfg, **kw: builds.append(kw) or real(cfg, **kw))
    missing = tmp_path / "no-such-tree"
    argv = ["run", str(tiny_yaml), "--print-config", "--set", "data.train=[{dataset: folder, root: %s}]" % missing,
            "--grid", "losses.1.margin=0.3,0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "meta device" not in err and "real build" not in err, err
    assert str(missing) in err and err.count("\n") == 1, err
    assert builds == [{"meta": True}], builds

class SweepCheckLabeler(Labeler):
    """A labeler with one key, `threshold`, checked by its constructor."""

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")

    def label_batch(self, images, records):
        return {"mark": np.zeros((len(images), 1), dtype=np.float32)}


@pytest.mark.parametrize("grid, key, refusal", [
    ("prepare.0.threshold=0.5,1.5", "prepare.0",
     "labeler 'sweep_check' could not be built: threshold must be in (0, 1)"),
    ("prepare.0.treshold=0.5", "prepare.0", "unknown key 'treshold'"),
    ("loggers=[tensorboard],[tensorbord]", "loggers.0", "tensorbord"),
])
def test_a_labeler_or_tracker_a_variant_refuses_stops_the_sweep_before_the_first_run(
        tiny_yaml, tmp_path, capsys, monkeypatch, register_component, grid, key, refusal):
    """A training run builds its `prepare` labelers and `loggers:` trackers first thing; the
    sweep's check of its variants built neither (its build skips the labelling), so a bad
    labeler or tracker key in one grid point was met only when that variant's turn came,
    after the variants before it had trained. It is now one line naming the variant and the
    key, before any run (nothing is labelled: the labeler is built, not run)."""
    import core.runner

    register_component("labeler", "sweep_check", SweepCheckLabeler)
    monkeypatch.setattr(SweepCheckLabeler, "label_batch", lambda *a: pytest.fail("labelled"))
    monkeypatch.setattr(core.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    step = "prepare=[{name: sweep_check, out: " + str(tmp_path / "marks.npz") + "}]"
    assert main(["run", str(tiny_yaml), "--set", step, "--grid", grid, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: variant ") and f"{key}" in err and refusal in err, err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "marks.npz").exists()


def test_a_run_folder_as_sweep_dir_is_refused_and_continue_with_nothing_to_continue_says_so(
        tiny_yaml, tmp_path, capsys, monkeypatch):
    """A run folder as --sweep-dir had the sweep's runs and table written into it; --continue
    on a folder holding no run of the sweep (a mistyped path) started afresh without a word."""
    import core.runner

    run_dir = tmp_path / "a_run"
    run_dir.mkdir()
    (run_dir / "pipeline.yaml").write_text(tiny_yaml.read_text())
    monkeypatch.setattr(core.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    assert main(["run", str(tiny_yaml), "--seeds", "0,1", "--sweep-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--sweep-dir: {run_dir} is a run folder (it holds pipeline.yaml), not a sweep's" in err, err
    told = []
    with pytest.raises(pytest.fail.Exception, match="a run started"):
        sweep.run_sweep(sweep.plan([tiny_yaml], [], [], "0"), tmp_path / "typo", echo=told.append,
                        continue_sweep=True)
    assert told == [f"warning: --continue: {tmp_path / 'typo'} holds no run of this sweep (no comparison.md, "
                    "no run folder of its variants); it starts from the beginning"]


def test_grid_and_seeds_syntax_errors_name_their_flag_once(tmp_path):
    """One line each, the flag as its prefix, not again inside ('--grid: --grid expects')."""
    for call, flag in ((lambda: sweep.parse_grid(["sampler.k"]), "--grid"),
                       (lambda: sweep.parse_seeds("0,x"), "--seeds")):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value).startswith(f"{flag}: expects ") and str(caught.value).count(flag) == 1


@pytest.mark.parametrize("faults, code", [
    ({"k=2": ConfigError("sampler.k: bad"), "k=4": FileNotFoundError("no such file: data/x")}, 2),
    ({"k=2": ConfigError("sampler.k: bad"), "k=4": RuntimeError("CUDA error: an illegal memory access")}, 1),
    ({"k=2": ConfigError("sampler.k: bad"), "k=4": None}, 1),
    ({"k=2": FloatingPointError("loss is nan"), "k=4": FloatingPointError("loss is inf")}, 3),
    ({"k=2": FloatingPointError("loss is nan"), "k=4": ConfigError("sampler.k: bad")}, 1)])
def test_a_sweep_whose_every_run_fails_on_bad_input_exits_2(tiny_yaml, tmp_path, monkeypatch, faults, code):
    """Every variant refused on bad input (what a single `core run` ends with exit 2) gave
    exit 1, as a crash does: a script could not tell 'fix the input' from 'it broke'. Exit 2
    only when every run failed on bad input; a crash among them, or a run that finished, 1."""
    import core.runner

    finished = type("Finished", (), {"metrics": {"synthetic/mAP": 50.0}})()

    def run(pipeline, overrides, **kwargs):
        fault = next(f for key, f in faults.items() if f"sampler.{key}" in overrides)
        if fault is None:
            return finished
        raise fault

    monkeypatch.setattr(core.runner, "run", run)
    assert main(["run", str(tiny_yaml), "--grid", "sampler.k=2,4", "--seeds", "0,1",
                 "--sweep-dir", str(tmp_path / "s")]) == code
    assert "| tiny sampler.k=2 | 0 |" in (tmp_path / "s" / "comparison.md").read_text()  # the table all the same


def test_a_run_failing_on_a_missing_file_warns_in_one_line_a_crash_with_its_traceback(
        tiny_yaml, tmp_path, monkeypatch, capsys):
    """A failure's warning drops its traceback lines when the run alone would have exited 2
    (bad input: a missing data file says it all), not only for a ConfigError; a crash keeps them."""
    import core.runner

    faults = {"k=2": FileNotFoundError("no such file: data/market/list.txt"), "k=4": RuntimeError("CUDA error")}

    def run(pipeline, overrides, **kwargs):
        raise next(f for key, f in faults.items() if f"sampler.{key}" in overrides)

    monkeypatch.setattr(core.runner, "run", run)
    assert main(["run", str(tiny_yaml), "--grid", "sampler.k=2,4", "--sweep-dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.splitlines()
    missing = err.index(next(x for x in err if "FAILED: FileNotFoundError" in x))
    crash = err.index(next(x for x in err if "FAILED: RuntimeError" in x))
    assert not err[missing + 1].startswith(("  ", "Traceback")), err[missing:missing + 3]
    assert err[crash + 1].startswith("  "), err[crash:crash + 3]
