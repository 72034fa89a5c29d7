"""Annotation files, the labeler runner and a pipeline's `prepare` step: the contract by
which a labeler plugin's output (e.g. part masks) reaches the batch."""

import os
import textwrap

import numpy as np
import pytest
import yaml

from core.config.loading import ConfigError, load_pipeline
from core.data.annotations import Annotations, attach
from core.data.loading import ImageSamples, collate
from core.data.spatial import boxes_to_patch_masks
from core.data.synthetic import SyntheticWorld
from core.labeling import LabelItem, run_labeler
from core.interfaces import Labeler, Labels
from core.pipeline import build_pipeline
from core.records import Record


def test_the_file_round_trips_and_names_what_is_attached(tmp_path):
    masks = np.random.default_rng(0).integers(0, 2, (3, 3, 4, 2)).astype(np.uint8)
    boxes = np.random.default_rng(1).random((3, 3, 4)).astype(np.float32)
    made = Annotations(keys=["a:1", "a:2", "b:1"], fields={"part_masks": masks, "part_boxes": boxes},
                       attach=["part_masks"], meta={"report": {"replaced": 0.25}})
    path = made.save(tmp_path / "sub" / "parts.npz")
    back = Annotations.load(path)
    assert back.keys == made.keys and back.attach == ["part_masks"] and back.grid == (4, 2)
    assert np.array_equal(back.fields["part_masks"], masks) and np.array_equal(back.fields["part_boxes"], boxes)
    assert back.meta["report"] == {"replaced": 0.25}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["parts.npz"]  # no temporary left


def test_bad_files_and_bad_contents_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="core label"):
        Annotations.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz: not an annotation file.*'keys'"):
        Annotations.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="3 rows for 2 keys"):
        Annotations(keys=["a", "b"], fields={"m": np.zeros(3)}, attach=[])
    with pytest.raises(ValueError, match="not fields"):
        Annotations(keys=["a"], fields={"m": np.zeros(1)}, attach=["part_masks"])


@pytest.mark.parametrize("case", ["cut", "objects"])
def test_an_annotation_file_cut_short_or_holding_objects_is_one_line_naming_it(tmp_path, case):
    """A labels file someone sent, cut in transfer, raised numpy's bare 'BadZipFile: File is
    not a zip file' (no file named, exit 1); one holding Python objects is refused without
    unpickling them."""
    made = Annotations(keys=["a:1", "a:2"], fields={"part_boxes": np.zeros((2, 3, 4), np.float32)}, attach=[])
    path = made.save(tmp_path / "parts.npz")
    if case == "cut":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, keys=np.array(["a:1"]), __meta__=np.array("{}"), part_boxes=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError) as caught:
        Annotations.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable annotation file (.npz): ") and "\n" not in message, message
    assert ("zip" if case == "cut" else "allow_pickle") in message, message


def test_an_annotation_file_is_written_as_docs_reliability_says_umask_and_write_errors(tmp_path, monkeypatch):
    """docs/reliability.md: annotation files get the user's umask, and a failed write is
    'cannot write PATH: ...; the previous file is kept'. Annotations.save had its own temp
    file and rename: the file kept mkstemp's 0600, no fsync, and a full disk was a raw
    OSError naming the temp file. Seen failing before: mode 0o600."""
    import errno

    from core.training.checkpoint import WriteError

    made = Annotations(keys=["a:1"], fields={"part_boxes": np.zeros((1, 3, 4), np.float32)}, attach=[])
    old = os.umask(0o022)
    try:
        path = made.save(tmp_path / "parts.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    kept = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device; the previous file is kept"):
        made.save(path)
    assert path.read_bytes() == kept and [p.name for p in tmp_path.iterdir()] == ["parts.npz"]


def test_an_annotation_file_whose_compressed_data_is_damaged_is_one_line_naming_it(tmp_path):
    """Bytes damaged inside a member's compressed data (the zip's directory intact) escaped as
    zlib's bare 'Error -3 while decompressing data' (no file named, exit 1; a labelling
    chunk so damaged stopped the resume that relabels damaged chunks). Seen failing before:
    zlib.error raised."""
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, (2, 3, 64, 32), dtype=np.uint8)  # compressible: deflated, not stored
    path = Annotations(keys=["a:1", "a:2"], fields={"part_masks": masks}, attach=[]).save(tmp_path / "parts.npz")
    import zipfile

    member = next(i for i in zipfile.ZipFile(path).infolist() if i.filename == "part_masks.npy")
    assert member.compress_type == zipfile.ZIP_DEFLATED and member.compress_size > 200
    data = bytearray(path.read_bytes())
    start = member.header_offset + 100  # past the local header, early in the deflated stream
    data[start:start + 40] = bytes(40)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as caught:
        Annotations.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable annotation file (.npz): ") and "\n" not in message, message


def _disk_fault_on(monkeypatch, path, at="open"):
    """Reading `path` fails as a failing disk does (EIO), at `open` or at the first `read`;
    chmod 000 does not stop root, so the fault is put into `open` itself."""
    import builtins
    import errno

    real_open = builtins.open

    class FailingRead:
        def __init__(self, f):
            self.f = f

        def read(self, *args):
            raise OSError(errno.EIO, "Input/output error")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def faulty(file, mode="r", *args, **kwargs):
        if str(file) == str(path) and "r" in mode:
            if at == "open":
                raise OSError(errno.EIO, "Input/output error", str(file))
            return FailingRead(real_open(file, mode, *args, **kwargs))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", faulty)


@pytest.mark.parametrize("at", ["open", "read"])
def test_a_disk_fault_reading_an_annotation_file_is_not_told_as_a_corrupt_file(tmp_path, monkeypatch, at):
    """An I/O error reading a good label file was told 'not a readable annotation file', as a
    file cut short is: a researcher told so may delete and relabel hours of labels. It is one
    line naming the file and the OS error, saying it was not judged corrupt (an OSError, not
    the ValueError of a bad file). Seen failing before: a ValueError 'not a readable ...'."""
    from core.data.annotations import FileReadFault

    made = Annotations(keys=["a:1", "a:2"], fields={"part_boxes": np.zeros((2, 3, 4), np.float32)}, attach=[])
    path = made.save(tmp_path / "parts.npz")
    _disk_fault_on(monkeypatch, path, at)
    with pytest.raises(FileReadFault) as caught:
        Annotations.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: the annotation file could not be read from disk ([Errno 5] Input/output "
                              "error); it was not judged corrupt") and "\n" not in message, message
    assert not isinstance(caught.value, ValueError) and caught.value.errno == 5
    monkeypatch.undo()
    assert Annotations.load(path).keys == ["a:1", "a:2"]  # the file itself is fine


def test_a_prepare_step_whose_label_file_meets_a_disk_fault_stops_and_keeps_it(tmp_path, tiny_pipeline_config,
                                                                              monkeypatch):
    """The labeler's up-to-date check took any OSError reading the file for 'not up to date'
    and labelled again over it: a transient disk fault cost the labels. It now stops with
    the line naming the file; the labeler is not called and the file is kept. Seen failing
    before: the labeler ran and the file was replaced."""
    from core.data.annotations import FileReadFault
    from core.plugins import get_plugin_manager

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "labels/parts.npz"}])
    build_pipeline(load_pipeline(path), echo=lambda *_: None)
    labels = tmp_path / "labels" / "parts.npz"
    kept = labels.read_bytes()
    module = next(m for m in get_plugin_manager().get_plugins() if hasattr(m, "CALLS"))
    calls = len(module.CALLS)
    _disk_fault_on(monkeypatch, "labels/parts.npz", "read")
    with pytest.raises(FileReadFault, match="labels/parts.npz: the annotation file could not be read from disk"):
        build_pipeline(load_pipeline(path), echo=lambda *_: None)
    assert len(module.CALLS) == calls and labels.read_bytes() == kept


def test_attach_requires_every_record_and_the_backbone_grid():
    made = Annotations(keys=["s:a", "s:b"], fields={"part_masks": np.ones((2, 3, 4, 2), np.uint8)},
                       attach=["part_masks"])
    records = [Record(None, 0, 0), Record(None, 1, 0), Record(None, 2, 0)]
    with pytest.raises(ValueError, match=r"labels.npz: 1 of 3 records have no annotation, e.g. s:c"):
        attach(made, records, ["s:a", "s:b", "s:c"], where="labels.npz", required=True)
    with pytest.raises(ValueError, match="4x2 patch grid, the backbone's is 8x4"):
        attach(made, records[:2], ["s:a", "s:b"], where="labels.npz", required=True, grid=(8, 4))
    assert attach(made, records, ["s:a", "s:b", "s:c"], where="x", required=False, grid=(4, 2)) == 2
    assert records[0].extras["part_masks"].shape == (3, 4, 2) and "part_masks" not in records[2].extras


class BoxLabeler(Labeler):
    """Labels with the world's own part boxes and counts the images it is shown."""

    batch_size = 8

    def __init__(self, fail_after: int | None = None):
        self.seen = 0
        self.fail_after = fail_after

    def label_batch(self, images, records):
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt
        self.seen += len(images)
        assert all(im.size == (16, 32) for im in images)  # decoded at the dataset's size
        return {"boxes": np.stack([r.extras["part_boxes"] for r in records])}

    def finalize(self, raw, records, ctx):
        masks = boxes_to_patch_masks(raw["boxes"], ctx.patch_grid).astype(np.uint8)
        return Labels(fields={"part_masks": masks, "boxes": raw["boxes"]}, attach=["part_masks"],
                      report={"images": len(records)})


class Ctx:
    patch_grid = (4, 2)


def items():
    world = SyntheticWorld(categories=["person"], identities=6, test_identities=2, images_per_identity=4,
                           render_size=[32, 16])
    return [LabelItem(world, r, f"synthetic:{world.record_key(r)}") for r in world.records("train")]


def test_an_interrupted_labelling_resumes_without_labelling_done_images_again(tmp_path):
    out, todo = tmp_path / "parts.npz", items()
    fingerprint = {"labeler": "box", "params": {}}
    with pytest.raises(KeyboardInterrupt):
        run_labeler(BoxLabeler(fail_after=16), todo, out, fingerprint=fingerprint, ctx=Ctx(), name="box",
                    progress=False, save_every=8, echo=lambda *_: None)
    assert not out.exists() and len(list((tmp_path / "parts.npz.partial").glob("chunk-*.npz"))) == 2
    second = BoxLabeler()
    done = run_labeler(second, todo, out, fingerprint=fingerprint, ctx=Ctx(), name="box", progress=False,
                       echo=lambda *_: None)
    assert second.seen == len(todo) - 16
    assert not (tmp_path / "parts.npz.partial").exists()
    truth = boxes_to_patch_masks(np.stack([i.record.extras["part_boxes"] for i in todo]), (4, 2))
    assert np.array_equal(done.fields["part_masks"], truth.astype(np.uint8))
    assert done.keys == [i.key for i in todo] and done.meta["report"] == {"images": len(todo)}
    # up to date: nothing is labelled; another fingerprint or force labels everything again
    third = BoxLabeler()
    run_labeler(third, todo, out, fingerprint=fingerprint, ctx=Ctx(), name="box", progress=False, echo=lambda *_: None)
    assert third.seen == 0
    fourth = BoxLabeler()
    run_labeler(fourth, todo, out, fingerprint={**fingerprint, "params": {"x": 1}}, ctx=Ctx(), name="box",
                progress=False, echo=lambda *_: None)
    assert fourth.seen == len(todo)


def test_a_labelling_chunk_cut_short_is_labelled_again(tmp_path):
    """A partial chunk that does not read (cut short) is relabelled, as the resume promises,
    instead of stopping the labelling with numpy's 'BadZipFile: File is not a zip file'."""
    out, todo = tmp_path / "parts.npz", items()
    fingerprint = {"labeler": "box", "params": {}}
    with pytest.raises(KeyboardInterrupt):
        run_labeler(BoxLabeler(fail_after=16), todo, out, fingerprint=fingerprint, ctx=Ctx(), name="box",
                    progress=False, save_every=8, echo=lambda *_: None)
    chunk = tmp_path / "parts.npz.partial" / "chunk-00001.npz"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    again = BoxLabeler()
    done = run_labeler(again, todo, out, fingerprint=fingerprint, ctx=Ctx(), name="box", progress=False,
                       echo=lambda *_: None)
    assert again.seen == len(todo) - 8 and done.keys == [i.key for i in todo]


def test_a_labeler_that_returns_the_wrong_number_of_rows_is_named(tmp_path):
    class Short(BoxLabeler):
        def label_batch(self, images, records):
            return {"boxes": np.zeros((1, 3, 4))}

    with pytest.raises(ValueError, match="labeler 'short': label_batch returned 1 rows of 'boxes' for 8 images"):
        run_labeler(Short(), items(), tmp_path / "x.npz", fingerprint={}, ctx=Ctx(), name="short", progress=False,
                    echo=lambda *_: None)


def test_a_labeler_that_declares_keys_gets_the_file_keys_of_its_images(tmp_path):
    class ByKey(BoxLabeler):
        """Looks its boxes up by key, as a grounder reading another tool's output would."""

        def __init__(self, table):
            super().__init__()
            self.table, self.asked = table, []

        def label_batch(self, images, records, keys):
            self.asked += keys
            return {"boxes": np.stack([self.table[k] for k in keys])}

    todo = items()
    labeler = ByKey({item.key: item.record.extras["part_boxes"] for item in todo})
    done = run_labeler(labeler, todo, tmp_path / "k.npz", fingerprint={}, ctx=Ctx(), name="bykey", progress=False,
                       echo=lambda *_: None)
    assert labeler.asked == done.keys == [item.key for item in todo]
    truth = boxes_to_patch_masks(np.stack([i.record.extras["part_boxes"] for i in todo]), (4, 2))
    assert np.array_equal(done.fields["part_masks"], truth.astype(np.uint8))


LABELER_PLUGIN = textwrap.dedent("""
    import numpy as np
    from core.hookspecs import hookimpl
    from core.interfaces import Labeler, Labels, Loss
    from core.data.spatial import boxes_to_patch_masks

    CALLS = []

    class TruthLabeler(Labeler):
        def __init__(self, coverage: float = 0.5):
            self.coverage = coverage

        def label_batch(self, images, records):
            CALLS.append(len(images))
            return {"boxes": np.stack([r.extras["part_boxes"] for r in records])}

        def finalize(self, raw, records, ctx):
            masks = boxes_to_patch_masks(raw["boxes"], ctx.patch_grid, self.coverage).astype(np.uint8)
            return Labels(fields={"part_masks": masks}, attach=["part_masks"])

    @hookimpl
    def register_labelers(register):
        register("truth_test", TruthLabeler)

    MASKS_SEEN = []  # not SEEN, the name tests/test_precision.py finds its plugin by

    class MasksSeen(Loss):
        def forward(self, outputs, batch):
            MASKS_SEEN.append(batch.extras.get("part_masks"))
            return outputs["features"].sum() * 0

    @hookimpl
    def register_losses(register):
        register("masks_seen_test", MasksSeen)
""")


def write_pipeline(tmp_path, tiny_pipeline_config, **extra):
    (tmp_path / "labelers.py").write_text(LABELER_PLUGIN)
    config = {**tiny_pipeline_config, "plugins": ["./labelers.py"], **extra}
    config["data"]["train"][0]["categories"] = ["person"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_prepare_step_labels_once_and_its_masks_reach_the_batch(tmp_path, tiny_pipeline_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config,
                          prepare=[{"name": "truth_test", "out": "labels/parts.npz", "coverage": 0.5}])
    p = build_pipeline(load_pipeline(path), echo=lambda *_: None)
    assert (tmp_path / "labels" / "parts.npz").is_file()
    grid = p.ctx.patch_grid
    samples = ImageSamples(p.train, p.train_datasets, p.test_transform)
    batch = collate([samples[i] for i in range(6)])
    truth = boxes_to_patch_masks(np.stack([r.extras["part_boxes"] for r in p.train.records[:6]]), grid)
    assert np.array_equal(batch.extras["part_masks"].numpy(), truth.reshape(6, 3, -1).astype(np.float32))
    annotations = Annotations.load(tmp_path / "labels" / "parts.npz")
    assert annotations.meta["fingerprint"]["params"] == {"coverage": 0.5}
    assert annotations.meta["labeler"] == "truth_test"

    from core.plugins import get_plugin_manager

    module = next(m for m in get_plugin_manager().get_plugins() if hasattr(m, "CALLS"))
    calls = len(module.CALLS)
    build_pipeline(load_pipeline(path), echo=lambda *_: None)  # up to date: not labelled again
    assert len(module.CALLS) == calls
    build_pipeline(load_pipeline(path, ["prepare.0.coverage=0.25"]), echo=lambda *_: None)
    assert len(module.CALLS) > calls  # another parameter: labelled again


def test_a_dataset_spec_attaches_a_file_and_a_wrong_grid_is_a_config_error(tmp_path, tiny_pipeline_config,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config,
                          prepare=[{"name": "truth_test", "out": "parts.npz"}])
    build_pipeline(load_pipeline(path), echo=lambda *_: None)
    # the file made by the prepare step, attached by a dataset spec of another pipeline
    config = yaml.safe_load(path.read_text())
    del config["prepare"]
    config["data"]["train"][0]["annotations"] = "parts.npz"
    path.write_text(yaml.safe_dump(config))
    p = build_pipeline(load_pipeline(path), echo=lambda *_: None)
    assert all("part_masks" in r.extras for r in p.train.records)
    with pytest.raises(ConfigError, match="patch grid"):
        build_pipeline(load_pipeline(path, ["data.transform.size=[64,32]"]), echo=lambda *_: None)
    with pytest.raises(ConfigError, match=r"--set: data.train.0.annotations \(missing.npz\): annotation file not found"):
        build_pipeline(load_pipeline(path, ["data.train.0.annotations=missing.npz"]), echo=lambda *_: None)


def test_a_prepare_step_without_out_or_with_an_unknown_labeler_is_named(tmp_path, tiny_pipeline_config):
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test"}])
    with pytest.raises(ConfigError, match=r"prepare.0.out: each prepare step needs 'out'"):
        build_pipeline(load_pipeline(path))
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_tset", "out": "x.npz"}])
    with pytest.raises(ConfigError, match="truth_test"):
        build_pipeline(load_pipeline(path))


def test_core_label_runs_the_prepare_steps(tmp_path, tiny_pipeline_config, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "parts.npz"}])
    assert main(["label", str(path)]) == 0  # the labelers' messages are log records: stderr (#26)
    assert "wrote parts.npz" in capsys.readouterr().err
    assert main(["label", str(path)]) == 0
    assert "up to date" in capsys.readouterr().err
    assert main(["label", str(path), "--force"]) == 0
    assert "wrote parts.npz" in capsys.readouterr().err


def test_label_returns_the_files_of_the_prepare_steps(tmp_path, tiny_pipeline_config, monkeypatch):
    from pathlib import Path

    from core.runner import label

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "a/parts.npz"}])
    assert label(path) == [Path("a/parts.npz")] and Path("a/parts.npz").is_file()
    assert label(write_pipeline(tmp_path, tiny_pipeline_config)) == []


def test_resuming_a_run_never_labels_and_goes_on_with_the_labels_it_started_with(tmp_path, tiny_pipeline_config,
                                                                                 monkeypatch, capsys):
    """`core run --resume RUN` builds the run folder's pipeline, whose `prepare` labelers may
    be code the folder's author chose (a grounder that runs a model repo's code): with its
    label file gone, resuming used to label again (other labels than the run started with,
    and the labeler run for whoever sent the folder). It is refused naming the file and
    `core label`, the labeler not called; with the file back, the run resumes."""
    from core.cli import main
    from core.plugins import get_plugin_manager
    from core.runner import run

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "labels/p.npz"}])
    result = run(path, run_dir=tmp_path / "run", overrides=["trainer.stop_after_steps=1", "trainer.eval_before=false"])
    module = next(m for m in get_plugin_manager().get_plugins() if hasattr(m, "CALLS"))
    labels = tmp_path / "labels" / "p.npz"
    kept = labels.read_bytes()
    labels.unlink()
    calls = len(module.CALLS)
    assert main(["run", "--resume", str(result.run_dir), "--allow-plugin-files"]) == 2
    err = capsys.readouterr().err
    assert "prepare.0" in err and "labels/p.npz" in err and "core label" in err and "resuming" in err, err
    assert len(module.CALLS) == calls and not labels.exists()
    labels.write_bytes(kept)
    assert main(["run", "--resume", str(result.run_dir), "--allow-plugin-files"]) == 0, capsys.readouterr().err
    assert len(module.CALLS) == calls


@pytest.mark.parametrize("out", ["folder", "a_file/parts.npz"])
def test_an_out_that_cannot_be_written_is_refused_before_the_labeler_runs(tmp_path, tiny_pipeline_config,
                                                                         monkeypatch, out):
    """`out:` a folder, or a path through a file: one line naming the key, before any image is
    labelled (it was an `[Errno 21] Is a directory` with exit 1 once the labelling was done)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": out}])
    with pytest.raises(ConfigError, match=rf"prepare\.0\.out: .*{out.split('/')[0]}") as caught:
        build_pipeline(load_pipeline(path), echo=lambda *_: None)
    assert "\n" not in str(caught.value)
    from core.plugins import get_plugin_manager

    ours = [m for m in get_plugin_manager().get_plugins()
            if hasattr(m, "CALLS") and str(getattr(m, "__file__", "")).startswith(str(tmp_path))]
    assert all(m.CALLS == [] for m in ours)  # nothing was labelled
    assert not (tmp_path / f"{out}.partial").exists()


def test_validate_labels_only_its_batch_and_leaves_the_label_file_alone(tmp_path, tiny_pipeline_config, monkeypatch):
    """`core validate` of a pipeline whose label file is missing ran the labeler over every
    training image and wrote the file (CogVLM over the whole training set for muva.yaml)
    before its one step. It now labels only the batch it checks, into no file; the step's
    losses see the labels; a stale file is left as it is; an up-to-date one is used."""
    from core.plugins import get_plugin_manager
    from core.runner import validate

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "labels/parts.npz"}])
    config = yaml.safe_load(path.read_text())
    config["losses"] = [*config["losses"], {"name": "masks_seen_test"}]
    path.write_text(yaml.safe_dump(config))
    summary = validate(path, ["trainer.device=cpu"])
    module = next(m for m in get_plugin_manager().get_plugins() if hasattr(m, "CALLS"))
    (step,) = summary["labels_sampled"]
    batch_size = config["sampler"]["batch_size"]
    assert step["step"] == "prepare.0" and step["out"] == "labels/parts.npz" and step["labeler"] == "truth_test"
    assert sum(module.CALLS) == step["labelled"] <= batch_size < step["images"] == summary["train"]["images"]
    assert not (tmp_path / "labels" / "parts.npz").exists()
    assert not list((tmp_path / "labels").iterdir())  # no partial chunks either
    masks = module.MASKS_SEEN[-1]
    assert masks is not None and masks.shape[0] == batch_size and masks.sum() > 0

    # a stale file (another parameter) stays byte for byte; an up-to-date one is used, nothing labelled
    build_pipeline(load_pipeline(path, ["prepare.0.coverage=0.25"]), echo=lambda *_: None)
    before = (tmp_path / "labels" / "parts.npz").read_bytes()
    assert validate(path, ["trainer.device=cpu"])["labels_sampled"][0]["step"] == "prepare.0"
    assert (tmp_path / "labels" / "parts.npz").read_bytes() == before
    calls = len(module.CALLS)
    summary = validate(path, ["trainer.device=cpu", "prepare.0.coverage=0.25"])
    assert summary["labels_sampled"] == [] and len(module.CALLS) == calls
    assert module.MASKS_SEEN[-1] is not None


def test_sampled_labels_reach_exactly_their_own_rows_each_image_labelled_once(tmp_path, tiny_pipeline_config,
                                                                             monkeypatch):
    """validate's sampled labelling (DeferredLabels.label_rows) with the rows a PK batch may
    draw: out of order and one twice. Each row drawn gets the masks of its own image (the
    truth boxes it carries, as `core label` would give), no other row gets any, and each
    image is labelled once."""
    from core.plugins import get_plugin_manager

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "parts.npz"}])
    p = build_pipeline(load_pipeline(path), prepare="check", echo=lambda *_: None)
    (step,) = p.deferred_labels
    module = next(m for m in get_plugin_manager().get_plugins() if hasattr(m, "CALLS"))
    calls = sum(module.CALLS)
    rows = [9, 2, 17, 2, 5]
    (tmp_path / "sampled").mkdir()
    assert step.label_rows(p.train, rows, p.ctx, tmp_path / "sampled") == 4
    assert sum(module.CALLS) - calls == 4
    records = list(p.train.records)
    for r, record in enumerate(records):
        masks = record.extras.get("part_masks")
        if r not in rows:
            assert masks is None, r
            continue
        truth = boxes_to_patch_masks(record.extras["part_boxes"][None], p.ctx.patch_grid, 0.5).astype(np.uint8)[0]
        assert np.array_equal(np.asarray(masks), truth), r


def test_core_validate_says_which_labels_it_sampled(tmp_path, tiny_pipeline_config, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path, tiny_pipeline_config, prepare=[{"name": "truth_test", "out": "parts.npz"}])
    assert main(["validate", str(path), "--set", "trainer.device=cpu"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "prepare.0:" in x)
    assert "parts.npz is missing or stale" in line and f"core label {path}" in line, line
