"""`core data synth`: the world on disk in the Market-1501 layout and as a manifest, and
a preview grid; the command keeps `core`'s start-up torch-free."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from PIL import Image

from core.cli import main
from core.data.manifest import ManifestDataset

MARKET_NAME = re.compile(r"^(\d{4})_c(\d+)s1_(\d{6})_00\.jpg$")
ARGS = ["--categories", "person", "ship", "--identities", "3", "--test-identities", "2", "--cameras", "3",
        "--images-per-identity", "4", "--render-size", "32", "16", "--clothes-changes", "1",
        "--infrared-cameras", "2", "--domains", "synthetic", "sketch"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), *ARGS]) == 0
    return out


def test_export_writes_the_market_layout(exported):
    counts = {}
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(p.name for p in (exported / folder).iterdir())
        assert names and all(MARKET_NAME.match(n) for n in names), names[:3]
        counts[folder] = len(names)
    # 2 categories x 3 identities x 2 domains x 4 images; test: 2 x 2 x 2 x (2 query, 2 gallery)
    assert counts == {"bounding_box_train": 48, "query": 16, "bounding_box_test": 16}
    train_pids = {int(MARKET_NAME.match(p.name).group(1)) for p in (exported / "bounding_box_train").iterdir()}
    assert train_pids == set(range(1, 7))
    cams = {int(MARKET_NAME.match(p.name).group(2)) for p in (exported / "query").iterdir()}
    assert cams == {1, 2}


def test_manifest_reads_back_with_the_same_counts_and_annotations(exported):
    data = ManifestDataset(str(exported / "manifest.csv"))
    assert {s: len(data.records(s)) for s in ("train", "query", "gallery")} == {"train": 48, "query": 16,
                                                                                "gallery": 16}
    records = data.records("train")
    assert Counter(r.category for r in records) == {"person": 24, "ship": 24}
    assert {r.domain for r in records} == {"synthetic", "sketch"}
    assert all(r.path and (exported / r.path).is_file() for r in records)
    r = records[0]
    assert {"caption", "attributes", "clothes_id", "modality", "part_boxes", "market_pid"} <= set(r.extras)
    assert {rec.extras["modality"] for rec in records if rec.camid == 2} == {1}  # typed again from CSV


def test_mapping_names_every_market_pid_once_per_set(exported):
    rows = (exported / "mapping.csv").read_text().splitlines()
    assert rows[0] == "set,market_pid,pid,category,identity"
    keys = [tuple(row.split(",")[:2]) for row in rows[1:]]
    assert len(keys) == len(set(keys)) == 6 + 4


def test_preview_writes_a_png(tmp_path):
    out = tmp_path / "preview.png"
    assert main(["data", "synth", "--preview", str(out), *ARGS, "--preview-identities", "2"]) == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 2 * 3 * 16 and image.size[1] > 2 * 2 * 32


def test_bad_options_are_reported_not_raised(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--categories", "dragon"]) == 2
    assert "unknown category 'dragon'" in capsys.readouterr().err
    assert main(["data", "synth"]) == 2


def test_data_synth_help_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from core.cli import main
        try:
            main(["data", "synth", "--help"])
        except SystemExit:
            pass
        assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'torch or numpy was imported'
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--out DIR" in proc.stdout


def test_market_reader_parses_the_export(exported):
    layouts = pytest.importorskip("core.data.layouts.market1501")
    data = layouts.Market1501(str(exported))
    assert {s: len(data.records(s)) for s in ("train", "query", "gallery")} == {"train": 48, "query": 16,
                                                                                "gallery": 16}
    assert {r.pid for r in data.records("query")} == {r.pid for r in data.records("gallery")}


@pytest.mark.parametrize("preview, expected", [
    ("a_folder", "is a folder; give a picture file name"),
    ("grid", "has no picture file suffix; give a name ending in .png"),
    ("missing/grid.png", "the folder")])
def test_a_preview_path_that_cannot_be_a_picture_is_refused_before_rendering(tmp_path, capsys, monkeypatch,
                                                                              preview, expected):
    """It was PIL's 'unknown file extension: ' (or an [Errno 2]) once the world was rendered
    and exported; a folder was even told to pass --overwrite."""
    import core.data.synthetic

    (tmp_path / "a_folder").mkdir()
    monkeypatch.setattr(core.data.synthetic, "SyntheticWorld", lambda *a, **k: pytest.fail("rendered"))
    assert main(["data", "synth", "--preview", str(tmp_path / preview), *ARGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --preview: ") and expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flags, said", [
    (["--clothes-changes", "-1"], "--clothes-changes must be >= 0; got -1"),
    (["--identities", "0"], "--identities and --test-identities must be >= 1"),
    (["--cameras", "1"], "--cameras must be >= 2"),
    (["--images-per-identity", "2"], "--images-per-identity must be >= 3"),
    (["--render-size", "8", "64"], "--render-size must be [height, width], each >= 16"),
    (["--held-out-categories", "dragon"], "unknown category 'dragon' in --held-out-categories; known categories: "),
    (["--held-out-domains", "sketch"], "held-out domain 'sketch' is not in --domains"),
    (["--infrared-cameras", "4"], "--infrared-cameras names camera 4; cameras are 0..3"),
    (["--perspective", "1.5"], "--perspective must be in [0, 1]"),
    (["--seed", "-1"], "--seed must be >= 0; got -1"),
    (["--quality", "101"], "--quality is the JPEG quality, 0 to 100"),
    (["--preview-identities", "0"], "--preview-identities must be >= 1")])
def test_a_bad_value_is_one_line_naming_its_flag(tmp_path, capsys, flags, said):
    """The world's checks named its parameters ('clothes_changes' after 'SyntheticWorld:'),
    not the flags; --seed -1 was numpy's 'expected non-negative integer'; --quality and
    --preview-identities out of range were taken (a 200 JPEG quality, an empty preview)."""
    assert main(["data", "synth", "--out", str(tmp_path / "out"), "--preview", str(tmp_path / "p.png"),
                 *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and err.count("\n") == 1, err
    assert "SyntheticWorld" not in err and "_" not in err.split(";")[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.png").exists()
