"""`core extract` and `core search` (ranked-list pictures, worst queries) on a tiny trained run."""

import contextlib
import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from core.cli import main
from core.testing import TINY_PIPELINE


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from core.runner import run

    folder = tmp_path_factory.mktemp("tools-run")
    config = copy.deepcopy(TINY_PIPELINE)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config))
    return run(folder / "tiny.yaml", run_dir=folder / "run").run_dir


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The tiny world's query and gallery written to disk, Market-1501 names."""
    from core.data.synthetic import SyntheticWorld
    from core.data.synthetic.export import export_world

    out = tmp_path_factory.mktemp("images")
    world = SyntheticWorld(**{k: v for k, v in TINY_PIPELINE["data"]["train"][0].items() if k != "dataset"})
    export_world(world, out)
    return out


def test_extract_writes_embeddings_with_their_records(trained_run, tmp_path, capsys):
    out = tmp_path / "gallery.npz"
    assert main(["extract", str(trained_run), "--images", "run:gallery", "--out", str(out), "--device", "cpu"]) == 0
    assert "16 embeddings of dimension 32" in capsys.readouterr().out
    data = np.load(out)
    assert data["embeddings"].shape == (16, 32) and data["embeddings"].dtype == np.float32
    for key in ("paths", "pids", "camids", "categories", "domains", "splits"):
        assert len(data[key]) == 16, key
    assert set(data["categories"].tolist()) == {"person", "vehicle"}


def test_extract_reads_a_folder_and_a_manifest(trained_run, image_folder, tmp_path):
    from core.tools.extract import load_features

    assert main(["extract", str(trained_run), "--images", str(image_folder / "query"),
                 "--out", str(tmp_path / "q.npz")]) == 0
    from_folder = load_features(tmp_path / "q.npz")
    names = sorted(p.name for p in (image_folder / "query").iterdir())
    assert len(from_folder.embeddings) == len(names)
    assert from_folder.images.table.pids.tolist() == [int(n.split("_")[0]) for n in names]
    assert main(["extract", str(trained_run), "--images", str(image_folder / "manifest.csv"),
                 "--out", str(tmp_path / "m.npz")]) == 0
    from_manifest = load_features(tmp_path / "m.npz")
    assert len(from_manifest.embeddings) == len(from_manifest.images.table) > len(names)


def test_a_bad_manifest_row_is_one_line_naming_the_flag_file_and_line(trained_run, image_folder, tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    first = sorted((image_folder / "query").iterdir())[0]
    manifest.write_text(f"path,pid,camid\n{first},1,0\n{first},abc,0\n", encoding="utf-8")
    assert main(["extract", str(trained_run), "--images", str(manifest), "--out", str(tmp_path / "f.npz")]) == 2
    assert capsys.readouterr().err == f"error: --images {manifest}:3: field 'pid' must be an integer, got 'abc'\n"
    assert main(["extract", str(trained_run), "--images", str(tmp_path / "nothere"),
                 "--out", str(tmp_path / "f.npz")]) == 2
    assert capsys.readouterr().err == f"error: --images {tmp_path / 'nothere'}: no such image, folder or manifest\n"


def test_extract_checks_every_image_before_the_first_batch(trained_run, image_folder, tmp_path, capsys):
    folder = shutil.copytree(image_folder / "bounding_box_test", tmp_path / "gallery")
    names = sorted(p.name for p in folder.iterdir())
    bad = folder / names[-1]  # the last one: met only after every other batch is done
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # an interrupted copy
    out = tmp_path / "g.npz"
    assert main(["extract", str(trained_run), "--images", str(folder), "--out", str(out), "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert f"error: 1 unreadable image file (of {len(names)} checked): {bad}: " in err
    assert "Nothing was extracted" in err and "--skip-bad-images" in err
    assert "extract:" not in err and not out.exists()  # no batch was embedded
    assert main(["extract", str(trained_run), "--images", str(folder), "--out", str(out), "--skip-bad-images"]) == 0
    captured = capsys.readouterr()
    assert "warning: left out 1 unreadable image file" in captured.err
    assert f"{len(names) - 1} embeddings" in captured.out
    from core.tools.extract import load_features

    assert str(bad) not in [r.path for r in load_features(out).images.table.records]


def test_extract_with_every_image_unreadable_says_so_and_writes_nothing(trained_run, image_folder, tmp_path, capsys):
    folder = shutil.copytree(image_folder / "query", tmp_path / "query")
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[:40])
    out = tmp_path / "q.npz"
    assert main(["extract", str(trained_run), "--images", str(folder), "--out", str(out), "--skip-bad-images"]) == 2
    err = capsys.readouterr().err
    assert f"error: --images {folder}: every image file is unreadable (left out). Nothing was extracted\n" in err
    assert not out.exists()


def test_extract_skipping_a_bad_image_keeps_each_embedding_with_its_own_record(trained_run, image_folder, tmp_path):
    """A bad file in the middle: every row after it moves up one. The reference: the names
    (Market-1501: pid and camera) and an extract of the sound files alone."""
    from core.tools.extract import load_features

    folder = shutil.copytree(image_folder / "bounding_box_test", tmp_path / "gallery")
    names = sorted(p.name for p in folder.iterdir())
    sound = shutil.copytree(folder, tmp_path / "sound")
    bad = names[len(names) // 3]
    (sound / bad).unlink()
    (folder / bad).write_bytes((folder / bad).read_bytes()[:60])
    assert main(["extract", str(trained_run), "--images", str(folder), "--out", str(tmp_path / "s.npz"),
                 "--skip-bad-images", "--batch-size", "3"]) == 0
    assert main(["extract", str(trained_run), "--images", str(sound), "--out", str(tmp_path / "r.npz")]) == 0
    skipped, reference = load_features(tmp_path / "s.npz"), load_features(tmp_path / "r.npz")
    table = skipped.images.table
    kept = [n for n in names if n != bad]
    assert [Path(r.path).name for r in table.records] == kept
    assert table.pids.tolist() == [int(n.split("_")[0]) for n in kept]
    assert table.camids.tolist() == [int(n.split("_c")[1][0]) - 1 for n in kept]  # `c1` is camid 0
    np.testing.assert_allclose(skipped.embeddings, reference.embeddings, rtol=1e-5, atol=1e-6)


def test_an_extract_error_starts_its_own_line_after_the_progress_bar(trained_run, image_folder, tmp_path,
                                                                      terminal_stderr):
    from layout_fixtures import damaged_middle  # registered by conftest.py

    folder = shutil.copytree(image_folder / "query", tmp_path / "query")
    bad = sorted(folder.iterdir())[-1]
    bad.write_bytes(damaged_middle())  # passes the header and tail check; fails in its batch
    stream = terminal_stderr()
    assert main(["extract", str(trained_run), "--images", str(folder), "--out", str(tmp_path / "q.npz")]) == 2
    err = stream.getvalue()
    assert "extract:" in err  # the bar was drawn
    shown = err.replace("\r", "\n").split("\n")  # a terminal starts over at \r: the closed bar's line is reused
    assert any(line.startswith(f"error: cannot decode image {bad} (") for line in shown), repr(err)


def cut_last(folder):
    """Cut the last image of `folder` (the last met by a tool) in half, as an interrupted copy leaves it."""
    bad = sorted(folder.iterdir())[-1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


def test_search_checks_query_and_gallery_images_before_embedding_any(trained_run, image_folder, tmp_path, capsys):
    query = shutil.copytree(image_folder / "query", tmp_path / "query")
    gallery = shutil.copytree(image_folder / "bounding_box_test", tmp_path / "gallery")
    bad = [cut_last(query), cut_last(gallery)]
    args = ["search", str(trained_run), "--query", str(query), "--gallery", str(gallery), "--batch-size", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 unreadable image files (") and all(f"{b}: " in err for b in bad)
    assert "Nothing was searched" in err and "--skip-bad-images" in err
    assert "extract:" not in err  # no batch was embedded
    assert main([*args, "--skip-bad-images"]) == 0
    captured = capsys.readouterr()
    assert "warning: left out 2 unreadable image files" in captured.err
    assert "query " in captured.out and not any(b.name in captured.out for b in bad)


def test_search_against_a_features_file_checks_the_query_images(trained_run, image_folder, tmp_path, capsys):
    features = tmp_path / "gallery.npz"
    assert main(["extract", str(trained_run), "--images", str(image_folder / "bounding_box_test"),
                 "--out", str(features)]) == 0
    query = shutil.copytree(image_folder / "query", tmp_path / "query")
    bad = cut_last(query)
    assert main(["search", str(trained_run), "--query", str(query), "--gallery", str(features)]) == 2
    assert f"error: 1 unreadable image file (of {len(list(query.iterdir()))} checked): {bad}: " \
        in capsys.readouterr().err


def test_explain_checks_the_images_it_draws_and_its_gallery_before_drawing(trained_run, image_folder, tmp_path,
                                                                           capsys):
    query = shutil.copytree(image_folder / "query", tmp_path / "query")
    gallery = shutil.copytree(image_folder / "bounding_box_test", tmp_path / "gallery")
    beyond_limit = cut_last(query)  # --limit 2 draws the first two queries only: never read
    bad = cut_last(gallery)  # every gallery image is embedded to rank the matches
    out = tmp_path / "cams"
    args = ["explain", str(trained_run), "--images", str(query), "--gallery", str(gallery), "--out", str(out),
            "--method", "rollout", "--limit", "2", "--top", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: 1 unreadable image file (of {len(list(gallery.iterdir()))} checked): {bad}: ")
    assert "Nothing was drawn" in err and "--skip-bad-images" in err and str(beyond_limit) not in err
    assert not out.exists()
    assert main([*args, "--skip-bad-images"]) == 0
    assert "warning: left out 1 unreadable image file" in capsys.readouterr().err
    assert len(list(out.glob("*.png"))) == 2


def test_search_prints_and_draws_a_ranked_list_per_query(trained_run, image_folder, tmp_path, capsys):
    gallery = tmp_path / "gallery.npz"
    assert main(["extract", str(trained_run), "--images", str(image_folder / "bounding_box_test"),
                 "--out", str(gallery)]) == 0
    out = tmp_path / "search"
    assert main(["search", str(trained_run), "--query", str(image_folder / "query"), "--gallery", str(gallery),
                 "--top", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    queries = sorted((image_folder / "query").iterdir())
    assert printed.count("query ") == len(queries) and "    5. " in printed
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == len(queries)
    html = (out / "index.html").read_text()
    assert all(p.name in html for p in pictures)
    with Image.open(pictures[0]) as picture:  # query + 5 results, each with a coloured border
        assert picture.width > 5 * picture.height / 4
        colours = {tuple(c) for c in np.asarray(picture.convert("RGB")).reshape(-1, 3).tolist()}
    assert (34, 160, 60) in colours or (214, 40, 40) in colours  # green / red borders: identities known


def test_search_never_returns_the_query_file_itself(trained_run, image_folder):
    from core.tools.search import search

    folder = str(image_folder / "query")
    results = search(trained_run, folder, folder, top=3, device="cpu", progress=False, echo=lambda text: None)
    assert all(r.query not in r.gallery.tolist() for r in results)


def test_unknown_identities_get_no_verdict(trained_run, tmp_path):
    from core.tools.search import search

    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (16, 32), colour).save(tmp_path / f"photo{i}.png")
    results = search(trained_run, str(tmp_path / "photo0.png"), str(tmp_path), top=2, out=tmp_path / "out",
                     device="cpu", progress=False, echo=lambda text: None)
    assert results[0].correct == [None, None]
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_worst_queries_are_drawn_into_the_run_folder(trained_run, capsys):
    assert main(["search", str(trained_run), "--worst", "3", "--top", "4"]) == 0
    printed = capsys.readouterr().out
    folder = trained_run / "worst-queries"
    assert (folder / "index.html").is_file()
    pictures = sorted((folder / "synthetic").glob("*.png"))
    assert len(pictures) == 3 and "AP " in printed
    aps = [float(line.split("AP ")[1].split("%")[0]) for line in printed.splitlines() if line.startswith("query ")]
    assert aps == sorted(aps)  # lowest average precision first


def test_search_needs_query_and_gallery_or_worst(trained_run, capsys):
    assert main(["search", str(trained_run), "--query", "x"]) == 2
    assert "give --query and --gallery" in capsys.readouterr().err


def test_a_folder_that_is_no_run_is_named(tmp_path, capsys):
    assert main(["extract", str(tmp_path), "--images", "run:query", "--out", str(tmp_path / "f.npz")]) == 2
    assert "is not a run folder: no pipeline.yaml" in capsys.readouterr().err


def test_trainer_option_draws_the_worst_queries_into_the_run_folder(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["trainer"].update(worst_queries=3, eval_before=False)
    result = run_tiny_pipeline(config)
    folder = result.run_dir / "worst-queries"
    assert (folder / "index.html").is_file()
    assert len(list((folder / "synthetic").glob("*.png"))) == 3


def test_extract_half_writes_a_float16_memory_map_equal_to_the_rounded_embeddings(trained_run, image_folder,
                                                                                     tmp_path):
    """`--half` (issue 24): the embeddings go batch by batch into FEATS.f16.npy (float16,
    memory-mapped on load), the .npz keeps the records; values are the float32 extraction
    rounded to float16, the last partial batch included."""
    from core.tools.extract import load_features

    folder = str(image_folder / "bounding_box_test")
    assert main(["extract", str(trained_run), "--images", folder, "--out", str(tmp_path / "f32.npz"),
                 "--batch-size", "5"]) == 0
    assert main(["extract", str(trained_run), "--images", folder, "--out", str(tmp_path / "f16.npz"),
                 "--batch-size", "5", "--half"]) == 0
    with np.load(tmp_path / "f16.npz") as data:
        assert "embeddings" not in data and str(data["embeddings_file"]) == "f16.f16.npy"
    full, half = load_features(tmp_path / "f32.npz"), load_features(tmp_path / "f16.npz")
    assert isinstance(half.embeddings, np.memmap) and half.embeddings.dtype == np.float16
    assert len(half.embeddings) % 5 != 0  # a partial last batch is written too
    assert np.array_equal(np.asarray(half.embeddings), full.embeddings.astype(np.float16))
    assert half.images.table.pids.tolist() == full.images.table.pids.tolist()


@pytest.mark.parametrize("exclude_same_camera", [False, True])
def test_search_on_a_memory_mapped_gallery_gives_the_in_memory_lists(trained_run, image_folder, tmp_path,
                                                                     exclude_same_camera):
    """A `--half` gallery is ranked block by block (`_rank_blocked`), with the same
    exclusions (the query's own file, its identity and camera) and the same lists as the
    in-memory ranking of the float16-rounded embeddings; the gallery holds the queries."""
    from core.tools import search
    from core.tools.extract import load_features

    folder = str(image_folder / "bounding_box_test")
    main(["extract", str(trained_run), "--images", folder, "--out", str(tmp_path / "g.npz"), "--half"])
    gallery = load_features(tmp_path / "g.npz")
    rounded = np.asarray(gallery.embeddings, dtype=np.float32)
    a = search.rank(rounded, gallery.embeddings, "cosine", 6, gallery.images, gallery.images, exclude_same_camera)
    b = search.rank(rounded, rounded, "cosine", 6, gallery.images, gallery.images, exclude_same_camera)
    assert [r.gallery.tolist() for r in a] == [r.gallery.tolist() for r in b]
    assert all(len(r.gallery) == 6 and r.query not in r.gallery.tolist() for r in a)  # its own file excluded
    assert all(np.array_equal(x.distances, y.distances) for x, y in zip(a, b))
    assert [r.correct for r in a] == [r.correct for r in b]


@pytest.mark.parametrize("half", [False, True])
def test_an_earlier_extract_is_kept_unless_overwrite(trained_run, tmp_path, capsys, half):
    """A second extract onto the same --out replaced the first without a word. Now it is
    refused (exit 2, nothing embedded or touched); --overwrite replaces the .npz (and the
    .f16.npy), every other file stays."""
    out = tmp_path / "gallery.npz"
    argv = ["extract", str(trained_run), "--images", "run:gallery", "--out", str(out), *(["--half"] if half else [])]
    assert main(argv) == 0
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    said = f"{out} and {tmp_path / 'gallery.f16.npy'} already exist" if half else f"{out} already exists"
    assert f"--out: {said}" in err and "pass --overwrite" in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    out.write_bytes(b"not the embeddings")
    assert main([*argv, "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the same embeddings again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temp file left


def test_an_extract_interrupted_while_writing_keeps_the_old_file(trained_run, tmp_path, monkeypatch):
    """The .npz was written in place: a failure (disk full, Ctrl-C) part-way left half a
    file where the old one was. It is now written beside it and renamed once complete."""
    out = tmp_path / "gallery.npz"
    argv = ["extract", str(trained_run), "--images", "run:gallery", "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    before = out.read_bytes()

    def cut(file, **arrays):
        with (open(file, "wb") if isinstance(file, (str, Path)) else contextlib.nullcontext(file)) as f:
            f.write(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", cut)
    assert main(argv) == 130
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["gallery.npz"]


def write_market_folder(images, folder: Path) -> list[tuple[int, int]]:
    """`images` (an ImageSet) written as Market-1501 names, `<pid>_c<camera>s1_<frame>_00.jpg`
    with the camera counted from 1 as the dataset writes it (camid 0 is `c1`); returns
    (pid, camid) of each file in sorted name order."""
    folder.mkdir(parents=True)
    written = {}
    for i in range(len(images)):
        pid, camid = int(images.table.pids[i]), int(images.table.camids[i])
        name = f"{pid:04d}_c{camid + 1}s1_{i:06d}_00.jpg"
        images.image(i).save(folder / name)
        written[name] = (pid, camid)
    return [written[n] for n in sorted(written)]


def test_a_market_named_folder_against_run_query_excludes_exactly_the_same_identity_and_camera(trained_run, tmp_path):
    """The protocol as the standard Market-1501 evaluation writes it: a gallery item with
    the query's identity AND camera is left out, every other one is ranked. The folder
    holds the run's gallery under Market-1501 names (`c1` is the first camera, camid 0 in
    the run's records); the tools read `c1` as camera 1, so the cross-camera match was
    dropped and the same-camera one kept."""
    from core.tools.images import run_split
    from core.tools.loading import load_run
    from core.tools.search import search

    gallery = tmp_path / "gallery"
    written = write_market_folder(run_split(load_run(trained_run, device="cpu"), "gallery"), gallery)
    results = search(trained_run, "run:query", str(gallery), top=len(written), exclude_same_camera=True,
                     device="cpu", progress=False, echo=lambda text: None)
    query = run_split(load_run(trained_run, device="cpu"), "query").table
    for r in results:
        same = {j for j, (pid, cam) in enumerate(written)
                if pid == int(query.pids[r.query]) and cam == int(query.camids[r.query])}
        assert same and sorted(r.gallery.tolist()) == sorted(set(range(len(written))) - same)


def test_extract_of_a_market_folder_gives_the_market1501_readers_cameras(trained_run, image_folder, tmp_path):
    from core.data.layouts.market1501 import Market1501
    from core.tools.extract import load_features

    assert main(["extract", str(trained_run), "--images", str(image_folder / "bounding_box_test"),
                 "--out", str(tmp_path / "g.npz")]) == 0
    table = load_features(tmp_path / "g.npz").images.table
    reader = {r.path: (r.pid, r.camid) for r in Market1501(str(image_folder)).records("gallery")}
    assert {r.path: (r.pid, r.camid) for r in table.records} == reader
    assert sorted(set(c for _, c in reader.values())) == [0, 1]  # the world's two cameras, counted from 0


def test_images_of_unknown_category_are_not_given_a_real_one(trained_run, image_folder, tmp_path):
    """A plain folder says nothing of what its images show; the tools called every such
    image "object", one of the synthetic world's six categories. Against a run trained on
    several categories they are "unknown", which names no category of the world."""
    from core.data.synthetic.categories import CATEGORY_NAMES
    from core.tools.extract import load_features

    assert main(["extract", str(trained_run), "--images", str(image_folder / "query"),
                 "--out", str(tmp_path / "q.npz")]) == 0
    categories = set(load_features(tmp_path / "q.npz").images.table.column("category").astype(str).tolist())
    assert categories == {"unknown"} and not categories & set(CATEGORY_NAMES)


def test_images_of_a_folder_take_the_category_of_a_single_category_run(tiny_pipeline_config, run_tiny_pipeline,
                                                                      image_folder, tmp_path):
    """A run trained on one category can only take its images as that category."""
    from core.tools.extract import load_features

    tiny_pipeline_config["data"]["train"][0]["categories"] = ["vehicle"]
    tiny_pipeline_config["trainer"]["eval_before"] = False
    run_dir = run_tiny_pipeline(tiny_pipeline_config).run_dir
    assert main(["extract", str(run_dir), "--images", str(image_folder / "query"),
                 "--out", str(tmp_path / "q.npz")]) == 0
    assert set(load_features(tmp_path / "q.npz").images.table.column("category").astype(str).tolist()) == {"vehicle"}


def same_identity_and_camera(query, gallery, q: int) -> set[int]:
    """The gallery rows the protocol leaves out for query row `q`: its identity AND camera."""
    return {j for j in range(len(gallery.pids))
            if gallery.pids[j] == query.pids[q] and gallery.camids[j] == query.camids[q]}


def run_splits(run_dir):
    from core.tools.images import run_split
    from core.tools.loading import load_run

    run = load_run(run_dir, device="cpu")
    return run_split(run, "query").table, run_split(run, "gallery").table


def test_explain_ranks_the_runs_query_against_its_gallery_as_evaluation_does(trained_run, tmp_path, monkeypatch):
    """`core explain --images run:query` (gallery: the run's) drew as rank 1 the query's
    identity seen by the query's own camera, which evaluation (the Market-1501 protocol)
    and `core search --worst` leave out."""
    from core.tools import search

    ranked, real_rank = [], search.rank

    def spy(*args, **kwargs):
        ranked.extend(real_rank(*args, **kwargs))
        return ranked

    monkeypatch.setattr(search, "rank", spy)
    query, gallery = run_splits(trained_run)
    assert main(["explain", str(trained_run), "--images", "run:query", "--out", str(tmp_path / "cams"),
                 "--method", "rollout", "--limit", "3", "--top", str(len(gallery.pids))]) == 0
    assert len(ranked) == 3
    for r in ranked:
        excluded = same_identity_and_camera(query, gallery, r.query)
        assert excluded and sorted(r.gallery.tolist()) == sorted(set(range(len(gallery.pids))) - excluded)


def test_search_of_the_runs_own_splits_excludes_as_evaluation_does_unless_told_not_to(trained_run, capsys):
    from core.tools.search import search

    query, gallery = run_splits(trained_run)
    n = len(gallery.pids)
    results = search(trained_run, "run:query", "run:gallery", top=n, device="cpu", progress=False,
                     echo=lambda text: None)
    assert [sorted(r.gallery.tolist()) for r in results] == \
        [sorted(set(range(n)) - same_identity_and_camera(query, gallery, r.query)) for r in results]
    assert main(["search", str(trained_run), "--query", "run:query", "--gallery", "run:gallery", "--top", str(n),
                 "--no-exclude-same-camera"]) == 0
    assert capsys.readouterr().out.count(f"  {n:>3}. ") == len(query.pids)  # every gallery item ranked


def test_a_gallery_extracted_from_the_runs_own_split_excludes_as_run_gallery_does(trained_run, tmp_path):
    """`--gallery feats.npz` extracted from `run:gallery` holds the run's gallery and its
    cameras, yet search against `run:query` kept same-identity same-camera items (only
    `run:gallery` itself got the protocol's exclusion); a file from another run, or from a
    folder, keeps the old default (off)."""
    from core.tools.ranked_items import own_splits
    from core.tools.search import search

    feats = tmp_path / "g.npz"
    assert main(["extract", str(trained_run), "--images", "run:gallery", "--out", str(feats)]) == 0
    query, gallery = run_splits(trained_run)
    n = len(gallery.pids)
    results = search(trained_run, "run:query", str(feats), top=n, device="cpu", progress=False,
                     echo=lambda text: None)
    assert [sorted(r.gallery.tolist()) for r in results] == \
        [sorted(set(range(n)) - same_identity_and_camera(query, gallery, r.query)) for r in results]
    other = type("Run", (), {"run_dir": tmp_path, "pipeline": None})()
    assert not own_splits(other, "run:query", feats)  # extracted with another run


def split_tree(manifest: Path, root: Path) -> Path:
    """The manifest's images copied into the `folder` layout, `<split>/<category>/<identity>/<image>`."""
    import csv

    with manifest.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            target = root / row["split"] / row["category"] / row["market_pid"] / Path(row["path"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(manifest.parent / row["path"], target)
    return root


@pytest.mark.parametrize("source", ["manifest", "split folder"])
def test_a_source_with_splits_gives_its_query_rows_as_query_and_its_gallery_rows_as_gallery(
        trained_run, image_folder, tmp_path, capsys, source):
    """`--gallery manifest.csv` (a manifest with a split column, as `core data synth`
    writes) took every row, train and query ones too, into the gallery: each query met
    itself and the training identities there. The manifest's split column says which row
    is which."""
    import csv

    with (image_folder / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = {s: sorted(Path(r["path"]).name for r in rows if r["split"] == s) for s in ("query", "gallery")}
    given = str(image_folder / "manifest.csv") if source == "manifest" else \
        str(split_tree(image_folder / "manifest.csv", tmp_path / "tree"))
    assert main(["search", str(trained_run), "--query", given, "--gallery", given, "--top", str(len(rows))]) == 0
    lines = capsys.readouterr().out.splitlines()
    queries = [line.split()[1] for line in lines if line.startswith("query ")]
    second = next(i for i, line in enumerate(lines) if i and line.startswith("query "))
    first_list = [line.split()[-1] for line in lines[1:second]]
    assert sorted(queries) == names["query"]
    assert sorted(first_list) == names["gallery"]  # the first query's ranked list: the gallery rows, each once


def test_a_manifest_that_marks_no_gallery_rows_given_as_gallery_is_one_line(trained_run, image_folder, tmp_path,
                                                                           capsys):
    import csv

    with (image_folder / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = [{**r, "path": str(image_folder / r["path"])} for r in csv.DictReader(f) if r["split"] != "gallery"]
    manifest = tmp_path / "no-gallery.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["search", str(trained_run), "--query", "run:query", "--gallery", str(manifest)]) == 2
    assert capsys.readouterr().err == (f"error: --gallery {manifest}: no gallery images in it (it marks 64 train, "
                                       "16 query); as --gallery, a manifest or a train/query/gallery folder gives "
                                       "its gallery images\n")


def test_search_of_the_run_against_a_folder_keeps_same_camera_items_unless_asked(trained_run, tmp_path):
    """The protocol's exclusion is the default only when both sides are the run's own splits:
    a folder's cameras may mean nothing (no `c<N>`: all camera 0), and excluding there
    would drop every true match. Here the folder holds the run's gallery under Market-1501
    names, so its cameras are real, and only --exclude-same-camera drops any."""
    from core.tools.images import run_split
    from core.tools.loading import load_run
    from core.tools.search import search

    written = write_market_folder(run_split(load_run(trained_run, device="cpu"), "gallery"), tmp_path / "gallery")
    results = search(trained_run, "run:query", str(tmp_path / "gallery"), top=len(written), device="cpu",
                     progress=False, echo=lambda text: None)
    assert [sorted(r.gallery.tolist()) for r in results] == [list(range(len(written)))] * len(results)


def test_search_of_the_runs_own_splits_follows_an_evaluator_that_keeps_same_camera_items(tiny_pipeline_config,
                                                                                          run_tiny_pipeline):
    """`exclude_same_camera: false` (single-camera data): evaluation ranks the whole gallery,
    and so do search and explain of the run's own splits by default."""
    from core.tools.search import search

    tiny_pipeline_config["evaluator"] = {"name": "reid", "exclude_same_camera": False}
    tiny_pipeline_config["trainer"]["eval_before"] = False
    run_dir = run_tiny_pipeline(tiny_pipeline_config).run_dir
    query, gallery = run_splits(run_dir)
    n = len(gallery.pids)
    assert any(same_identity_and_camera(query, gallery, q) for q in range(len(query.pids)))  # some to keep
    results = search(run_dir, "run:query", "run:gallery", top=n, device="cpu", progress=False, echo=lambda text: None)
    assert [sorted(r.gallery.tolist()) for r in results] == [list(range(n))] * len(query.pids)


@pytest.mark.parametrize("half", [False, True])
def test_search_of_a_gallery_file_excludes_exactly_the_protocols_items(trained_run, image_folder, tmp_path, half):
    """Every gallery item ranked but the query's own file and, under --exclude-same-camera,
    those of its identity AND camera (a plain loop over the records), for an in-memory
    gallery and a `--half` one ranked block by block; the folder is searched against itself."""
    from core.tools.extract import load_features
    from core.tools.search import search

    folder = str(image_folder / "bounding_box_test")
    out = tmp_path / "g.npz"
    half_flag = ["--half"] if half else []
    assert main(["extract", str(trained_run), "--images", folder, "--out", str(out), *half_flag]) == 0
    table = load_features(out).images.table
    n = len(table.pids)
    results = search(trained_run, folder, str(out), top=n, exclude_same_camera=True, device="cpu", progress=False,
                     echo=lambda text: None)
    assert len(results) == n
    for r in results:
        q = table.records[r.query]
        kept = [j for j, g in enumerate(table.records) if g.path != q.path and (g.pid, g.camid) != (q.pid, q.camid)]
        assert kept != list(range(n)) and sorted(r.gallery.tolist()) == kept


def test_explain_takes_the_gallery_rows_of_a_manifest_given_as_gallery(trained_run, image_folder, tmp_path,
                                                                       monkeypatch):
    """explain's --gallery reads a manifest as search's does: its split column's gallery rows."""
    import csv

    from core.tools import search

    with (image_folder / "manifest.csv").open(newline="", encoding="utf-8") as f:
        gallery = sorted(Path(r["path"]).name for r in csv.DictReader(f) if r["split"] == "gallery")
    ranked, real = [], search.rank

    def spy(query, g_emb, metric, top, query_set, gallery_set, *args, **kwargs):
        ranked.append(sorted(Path(r.path).name for r in gallery_set.table.records))
        return real(query, g_emb, metric, top, query_set, gallery_set, *args, **kwargs)

    monkeypatch.setattr(search, "rank", spy)
    assert main(["explain", str(trained_run), "--images", "run:query", "--gallery", str(image_folder / "manifest.csv"),
                 "--out", str(tmp_path / "cams"), "--method", "rollout", "--limit", "1"]) == 0
    assert ranked == [gallery]


def test_a_half_extract_interrupted_while_embedding_keeps_the_old_files_and_leaves_no_partial(trained_run, tmp_path,
                                                                                              monkeypatch):
    """--half writes the embeddings batch by batch into a hidden memory map beside the target,
    renamed into place once complete; an interruption part-way leaves the earlier files as
    they were and removes that partial map."""
    import core.tools.extract as X

    argv = ["extract", str(trained_run), "--images", "run:gallery", "--out", str(tmp_path / "g.npz"), "--half"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def stopped(*args, half_file=None, **kwargs):
        np.lib.format.open_memmap(half_file, mode="w+", dtype=np.float16, shape=(4, 32))[:] = 1  # a batch written
        raise KeyboardInterrupt

    monkeypatch.setattr(X, "embed", stopped)
    assert main([*argv, "--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("command", ["extract", "search"])
def test_images_without_the_field_a_model_embeds_them_with_are_one_line(trained_run, image_folder, tmp_path,
                                                                        instruction_conditioned_runs, capsys,
                                                                        command):
    """An Instruct-ReID run given a folder of images (no instructions): extract and search
    ended in a raw KeyError saying 'this pipeline does not provide' the field, exit 1."""
    folder, gallery = image_folder / "query", image_folder / "bounding_box_test"
    argv = (["extract", str(trained_run), "--images", str(folder), "--out", str(tmp_path / "f.npz")]
            if command == "extract" else
            ["search", str(trained_run), "--query", str(folder), "--gallery", str(gallery)])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    named = folder if command == "extract" else gallery  # search embeds its gallery first
    assert err.splitlines() == [err] and err.startswith(f"error: {named}: backbone 'instruct_editor' embeds each "
                                                        "image with its batch field 'instruction'"), err
