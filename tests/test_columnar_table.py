"""The columnar record table (core.data.columns) against the list-of-Records path it
replaces: the same records, splits, relabelling, batches and metrics on the synthetic
world and on the readers' fixtures; CSV and Parquet manifests give the same table; the
cache (core.data.cache) follows its inputs. The reference is the pre-columnar code,
restated here (a list of Record objects and Python loops), not the new code."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from core.data import cache as cache_mod
from core.data.columns import RecordColumns
from core.data.layouts import CUHK03NP, FolderDataset, Market1501, VeRi776
from core.data.loading import ImageSamples, collate
from core.data.manifest import ManifestDataset
from core.data.synthetic import SyntheticWorld
from core.data.synthetic.export import export_world
from core.data.table import RecordTable
from core.evaluation.reid import ReIDEvaluator
from core.interfaces import FeatureSet
from core.records import Record

from tests.test_data_layouts import cuhk03_tree, folder_tree, images, market_tree, veri_tree


# -- the reference: the list path as it was before columns ---------------------------------

def legacy_build(sources, relabel, category_names=None, domain_names=None) -> dict:
    """RecordTable.build before issue 24: Python loops over Record objects."""
    records, source_ids = [], []
    for sid, (_, recs) in enumerate(sources):
        records.extend(recs)
        source_ids.extend([sid] * len(recs))
    cats = list(category_names) if category_names is not None else sorted({r.category for r in records})
    doms = list(domain_names) if domain_names is not None else sorted({r.domain for r in records})
    cat_index = {c: i for i, c in enumerate(cats)}
    dom_index = {d: i for i, d in enumerate(doms)}
    for name, index, names in (("category", cat_index, cats), ("domain", dom_index, doms)):
        for r in records:
            if getattr(r, name) not in index:
                index[getattr(r, name)] = len(index)
                names.append(getattr(r, name))
    if relabel:
        labels: dict = {}
        pids = [labels.setdefault((s, r.pid), len(labels)) for s, r in zip(source_ids, records)]
    else:
        pids = [r.pid for r in records]
    return {"records": records, "source_ids": np.asarray(source_ids, np.int64), "pids": np.asarray(pids, np.int64),
            "camids": np.asarray([r.camid for r in records], np.int64),
            "category_ids": np.asarray([cat_index[r.category] for r in records], np.int64),
            "domain_ids": np.asarray([dom_index[r.domain] for r in records], np.int64),
            "category_names": cats, "domain_names": doms}


def same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return type(a) is type(b) and a == b


def same_record(a: Record, b: Record) -> bool:
    return ((a.path, a.pid, a.camid, a.category, a.domain, a.split) ==
            (b.path, b.pid, b.camid, b.category, b.domain, b.split)
            and a.extras.keys() == b.extras.keys() and all(same_value(a.extras[k], b.extras[k]) for k in a.extras))


def assert_same_records(got, expected) -> None:
    got, expected = list(got), list(expected)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert same_record(g, e), f"record {i}: {g} != {e}"


def assert_table_matches(table: RecordTable, ref: dict) -> None:
    assert isinstance(table.records, RecordColumns)
    assert_same_records(table.records, ref["records"])
    for key in ("source_ids", "pids", "camids", "category_ids", "domain_ids"):
        np.testing.assert_array_equal(getattr(table, key), ref[key], err_msg=key)
    assert table.category_names == ref["category_names"] and table.domain_names == ref["domain_names"]


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv("REID_CORE_CACHE", "off")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("REID_CORE_CACHE", str(folder))
    monkeypatch.setenv("REID_CORE_CACHE_MIN_ROWS", "0")
    return folder


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(categories=["person", "vehicle", "ship"], identities=5, test_identities=3,
                          images_per_identity=4, cameras=3, render_size=[32, 16], clothes_changes=1,
                          infrared_cameras=[2], captions=True)


# -- record views ----------------------------------------------------------------------------

def test_record_views_round_trip_every_kind_of_extra():
    boxes = [np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((1, 4), np.float32)]
    records = [
        Record("a/1.jpg", 3, 0, "person", "d1", "train",
               {"clothes_id": 2, "w": 0.5, "ir": True, "caption": "red coat", "part_boxes": boxes[0],
                "render_key": ("person", 1, 2, "d1"), "nested": {"k": [1, 2]}}),
        Record(None, 4, 5, "ship", "d2", "query", {"clothes_id": 7, "part_boxes": boxes[1]}),
        Record("b/é.jpg", -1, 1, "person", "d1", "gallery", {}),
    ]
    columns = RecordColumns.from_records(records)
    assert_same_records(columns, records)
    assert_same_records(columns.take([2, 0]), [records[2], records[0]])
    assert_same_records(RecordColumns.concat([columns, columns.take([1])]), records + [records[1]])
    view = columns[0]
    view.extras["caption"] = "changed"  # a view is built on access: the table is unchanged
    assert columns[0].extras["caption"] == "red coat"
    assert columns.take([2]) == records[2:] and columns[-1].pid == -1  # == as lists compare
    with pytest.raises(IndexError):
        columns[3]


def test_the_arrow_cache_file_round_trips_cacheable_columns(tmp_path):
    records = [Record(f"p/{i}.jpg", i % 3, i % 2, ["person", "ship"][i % 2], "d", ["train", "query"][i % 2],
                      {"clothes_id": i, "w": i / 3, "flag": bool(i % 2), "caption": f"c{i}",
                       "part_boxes": np.full((1 + i % 2, 4), i, np.float32)}
                      | ({"only_some": i} if i % 3 == 0 else {})) for i in range(7)]
    columns = RecordColumns.from_records(records)
    cache_mod.save_columns(columns, tmp_path / "t.arrow")
    loaded = cache_mod.load_columns(tmp_path / "t.arrow")
    assert_same_records(loaded, records)
    assert_same_records(loaded.take([5, 1]), [records[5], records[1]])


# -- the table against the list path ------------------------------------------------------

def test_the_table_matches_the_list_path_on_the_synthetic_world(world):
    recs = world.records("train")
    shuffled = [recs[i] for i in np.random.default_rng(0).permutation(len(recs))]  # pids out of order
    train = [("world", recs), ("again", recs[::2]), ("shuffled", shuffled)]
    assert_table_matches(RecordTable.build(train, relabel=True), legacy_build(train, relabel=True))
    # columns whose category codes are not in row order (a reordered table): names the given
    # list lacks are still appended in the order the records show them
    reordered = RecordColumns.from_records(recs).take(np.arange(len(recs))[::-1])
    src = [("world", reordered)]
    assert_table_matches(RecordTable.build(src, relabel=True, category_names=["x"]),
                         legacy_build([("world", recs[::-1])], relabel=True, category_names=["x"]))
    names = ["vehicle", "person"]  # a test table reuses the train names; others are appended
    for split in ("query", "gallery"):
        src = [("world", world.records(split))]
        assert_table_matches(RecordTable.build(src, relabel=False, category_names=names),
                             legacy_build(src, relabel=False, category_names=names))


def test_batches_and_metrics_match_the_list_path(world):
    recs = world.records("train")
    new = RecordTable.build([("world", recs)], relabel=True)
    ref = legacy_build([("world", recs)], relabel=True)
    old = RecordTable(**{k: ref[k] for k in ("records", "source_ids", "pids", "camids", "category_ids",
                                             "category_names", "domain_ids", "domain_names")}, sources=["world"])
    keys = [(i, 1000 + i, 0) for i in range(0, len(recs), 3)]
    got = collate([ImageSamples(new, [world], None)[k] for k in keys])
    want = collate([ImageSamples(old, [world], None)[k] for k in keys])
    for field in ("images", "pids", "camids", "categories", "domains", "roles", "indices"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert got.extras.keys() == want.extras.keys()
    for k in got.extras:
        a, b = got.extras[k], want.extras[k]
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), k

    gen = torch.Generator().manual_seed(0)
    q = RecordTable.build([("w", world.records("query"))], relabel=False, category_names=new.category_names)
    g = RecordTable.build([("w", world.records("gallery"))], relabel=False, category_names=new.category_names)
    qref = legacy_build([("w", world.records("query"))], relabel=False, category_names=new.category_names)
    gref = legacy_build([("w", world.records("gallery"))], relabel=False, category_names=new.category_names)
    qe, ge = torch.randn(len(q), 8, generator=gen), torch.randn(len(g), 8, generator=gen)
    qe += 0.5 * torch.nn.functional.one_hot(torch.as_tensor(q.pids) % 8, 8)
    ge += 0.5 * torch.nn.functional.one_hot(torch.as_tensor(g.pids) % 8, 8)

    def metrics(qt, gt, qr, gr):
        ev = ReIDEvaluator(per_category=True)
        return ev.evaluate(FeatureSet(qe, qt["pids"], qt["camids"], qt["category_ids"], qt["category_names"],
                                      records=list(qr)),
                           FeatureSet(ge, gt["pids"], gt["camids"], gt["category_ids"], gt["category_names"],
                                      records=list(gr)))

    as_dict = lambda t: {"pids": t.pids, "camids": t.camids, "category_ids": t.category_ids,  # noqa: E731
                         "category_names": t.category_names}
    assert metrics(as_dict(q), as_dict(g), q.records, g.records) == \
        metrics(qref, gref, qref["records"], gref["records"])


LAYOUTS = [
    ("market1501", lambda root: Market1501(str(market_tree(root)))),
    ("market1501-500k", lambda root: Market1501(str(images(market_tree(root) / "images", "0000_c1s1_9_00.jpg",
                                                              "-1_c2s1_8_00.jpg").parent), distractors=True)),
    ("veri776", lambda root: VeRi776(str(veri_tree(root)))),
    ("cuhk03np", lambda root: CUHK03NP(str(cuhk03_tree(root)))),
    ("cuhk03np-labeled", lambda root: CUHK03NP(str(cuhk03_tree(root)), labeled=True)),
    ("folder", lambda root: FolderDataset(str(folder_tree(root)))),
]


@pytest.mark.parametrize("name,make", LAYOUTS, ids=[n for n, _ in LAYOUTS])
def test_each_reader_fixture_gives_the_list_path_table(tmp_path, cache_dir, name, make):
    dataset = make(tmp_path / "data")
    for split in ("train", "query", "gallery"):
        # the reference: what the reader lists as Record objects, before any table
        listed = dataset.list_split(split) if hasattr(dataset, "list_split") else list(dataset.records(split))
        got = dataset.records(split)
        assert_same_records(got, listed)
        relabel = split == "train"
        assert_table_matches(RecordTable.build([(name, got)], relabel=relabel),
                             legacy_build([(name, listed)], relabel=relabel))
    if isinstance(dataset, Market1501):  # the layout's listing came through the cache the second time
        again = type(dataset)(str(dataset.root), **({"distractors": True} if dataset.distractors else {}))
        assert_same_records(again.records("gallery"), dataset.list_split("gallery"))
        assert any(cache_dir.glob("layout-*.arrow"))


# -- manifests ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory, world):
    out = tmp_path_factory.mktemp("export")
    export_world(world, out)
    return out / "manifest.csv"


def csv_module_records(path: Path, root: Path) -> list[Record]:
    """An independent reading of a manifest CSV: the csv module and the documented rules
    (cells typed int, else float, else text; part_boxes 4 numbers per part)."""
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            row = {k: v for k, v in row.items() if v != ""}
            extras = {}
            for k, v in row.items():
                if k in ("path", "pid", "camid", "category", "domain", "split"):
                    continue
                if k == "part_boxes":
                    extras[k] = np.asarray(v.split(), dtype=np.float32).reshape(-1, 4)
                    continue
                for cast in (int, float, str):
                    try:
                        extras[k] = cast(v)
                        break
                    except ValueError:
                        pass
            p = Path(row["path"])
            out.append(Record(str(p if p.is_absolute() else root / p), int(row["pid"]), int(row["camid"]),
                              row.get("category", "object"), row.get("domain", path.stem),
                              row.get("split", "train"), extras))
    return out


@pytest.fixture
def fast_path_only(monkeypatch):
    """The row-by-row reader refuses: the table must come from the pyarrow path."""
    def refuse(self):
        raise AssertionError(f"{self.path}: the fast path fell back to the row reader")

    monkeypatch.setattr(ManifestDataset, "parse_rows", refuse)
    return monkeypatch


def test_a_csv_manifest_reads_as_the_csv_module_reads_it(exported, no_cache, fast_path_only):
    ds = ManifestDataset(str(exported))
    fast_path_only.undo()
    reference = csv_module_records(exported, exported.parent)
    assert "part_boxes" in reference[0].extras and "caption" in reference[0].extras
    for split in ("train", "query", "gallery"):
        assert_same_records(ds.records(split), [r for r in reference if r.split == split])
    assert_same_records(ds.columns, ds.parse_rows())  # the row reader (the old code) agrees


def test_csv_and_parquet_manifests_give_the_same_table(exported, tmp_path, no_cache, fast_path_only):
    text = pcsv.read_csv(exported, convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in next(csv.reader(exported.open()))}, strings_can_be_null=True))
    pq.write_table(text, tmp_path / "as_text.parquet")  # every cell as the CSV's text
    typed = text.set_column(text.column_names.index("pid"), "pid", text.column("pid").cast(pa.int64()))
    typed = typed.set_column(typed.column_names.index("camid"), "camid", typed.column("camid").cast(pa.int32()))
    pq.write_table(typed, tmp_path / "typed.parquet")  # identities and cameras as integers
    want = ManifestDataset(str(exported))
    for name in ("as_text.parquet", "typed.parquet"):
        got = ManifestDataset(str(tmp_path / name), root=str(exported.parent))
        for split in ("train", "query", "gallery"):
            got_records = got.records(split)
            assert_same_records(got_records, want.records(split))
            assert_table_matches(RecordTable.build([("m", got_records)], relabel=True),
                                 legacy_build([("m", list(want.records(split)))], relabel=True))


def test_parquet_bad_rows_name_the_file_row_and_field(tmp_path, no_cache):
    pq.write_table(pa.table({"path": ["a.jpg", "b.jpg"], "pid": [1, None], "camid": [0, 0]}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"m\.parquet:row 2: missing field 'pid'; required fields"):
        ManifestDataset(str(tmp_path / "m.parquet"))
    pq.write_table(pa.table({"path": ["a.jpg"], "pid": [1]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"n\.parquet: the schema lacks the column\(s\) camid"):
        ManifestDataset(str(tmp_path / "n.parquet"))


@pytest.mark.parametrize("body,message", [
    ("a.jpg,1,0\nb.jpg,x,0\n", r"m\.csv:3: field 'pid' must be an integer, got 'x'"),
    ("a.jpg,1,0\n\nb.jpg,2,0,9\n", r"m\.csv:4: more values than header columns"),
    ("a.jpg,1,0,,\nb.jpg,2,0,val,\n", None),
])
def test_csv_errors_after_the_fast_path_name_the_line(tmp_path, no_cache, body, message):
    header = "path,pid,camid,split,note\n" if message is None else "path,pid,camid\n"
    (tmp_path / "m.csv").write_text(header + body)
    with pytest.raises(ValueError, match=message or r"m\.csv:3: field 'split' has unknown value 'val'"):
        ManifestDataset(str(tmp_path / "m.csv"))


def test_mixed_cells_keep_their_per_cell_types_and_odd_paths_are_normalised(tmp_path, no_cache):
    (tmp_path / "m.csv").write_text("path,pid,camid,code,w,v\n./a//b.jpg,1,0,7,1.5,1.5\n/abs/./c.jpg,2,1,x7,2,2\n"
                                    "d/,3,2,, ,\n")
    got = list(ManifestDataset(str(tmp_path / "m.csv")).records("train"))
    reference = csv_module_records(tmp_path / "m.csv", tmp_path)
    assert_same_records(got, reference)
    assert [r.path for r in got] == [str(tmp_path / "a/b.jpg"), "/abs/c.jpg", str(tmp_path / "d")]


# -- the cache ----------------------------------------------------------------------------------

def test_a_changed_manifest_invalidates_the_cache(tmp_path, cache_dir, monkeypatch):
    m = tmp_path / "m.csv"
    m.write_text("path,pid,camid,split\na.jpg,1,0,train\nb.jpg,2,1,query\n")
    first = ManifestDataset(str(m))
    assert len(list(cache_dir.glob("manifest-*.arrow"))) == 1

    def refuse(self):
        raise AssertionError("parsed again although the cache holds this manifest")

    with monkeypatch.context() as patch:
        patch.setattr(ManifestDataset, "_parse", refuse)
        again = ManifestDataset(str(m))  # from the memory-mapped file
    assert_same_records(again.columns, first.columns)
    m.write_text("path,pid,camid,split\na.jpg,1,0,train\nb.jpg,5,1,query\n")  # same size, new content
    stat = m.stat()
    os.utime(m, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = ManifestDataset(str(m))
    assert [r.pid for r in changed.records("query")] == [5]
    assert len(list(cache_dir.glob("manifest-*.arrow"))) == 2


def test_an_added_image_invalidates_the_folder_cache(tmp_path, cache_dir):
    root = market_tree(tmp_path / "market")
    assert len(Market1501(str(root)).records("train")) == 4
    folder = root / "bounding_box_train"
    images(folder, "0009_c2s1_000001_01.jpg")
    stat = folder.stat()  # the folder's mtime may share a clock tick with the first listing
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert_same_records(Market1501(str(root)).records("train"), Market1501(str(root)).list_split("train"))
    assert len(Market1501(str(root)).records("train")) == 5


def test_small_tables_are_not_cached_by_default_and_off_disables_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REID_CORE_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("REID_CORE_CACHE_MIN_ROWS", raising=False)
    ManifestDataset(str(tmp_path / "m.csv") if (tmp_path / "m.csv").write_text("path,pid,camid\na,1,0\n") else "")
    assert not (tmp_path / "c").exists()
    monkeypatch.setenv("REID_CORE_CACHE", "off")
    assert cache_mod.cache_dir() is None
    monkeypatch.delenv("REID_CORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.cache_dir() == tmp_path / "xdg" / "reid-core"


def test_attach_writes_columns_like_it_writes_records(world):
    from core.data.annotations import Annotations, attach

    recs = world.records("train")
    keys = [f"k{i}" for i in range(len(recs))]
    fields = {"part_masks": np.arange(len(recs) * 6, dtype=np.uint8).reshape(len(recs), 2, 3),
              "count": np.arange(len(recs), dtype=np.int64)}
    ann = Annotations(keys=keys[1:], fields={k: v[1:] for k, v in fields.items()}, attach=["part_masks", "count"],
                      meta={})
    table = RecordTable.build([("w", recs)], relabel=True)
    rows = list(range(0, len(recs), 2))
    listed = [Record(r.path, r.pid, r.camid, r.category, r.domain, r.split, dict(r.extras)) for r in recs]
    assert attach(ann, table.records, [keys[j] for j in rows], where="x", required=False, rows=rows) == \
        attach(ann, listed, [keys[j] for j in rows], where="x", required=False, rows=rows)
    assert_same_records(table.records, listed)


# -- core data stats ------------------------------------------------------------------------------

def test_core_data_stats_counts_what_the_csv_module_counts(exported, no_cache, capsys):
    import json

    from core.cli import main

    assert main(["data", "stats", str(exported), "--json"]) == 0
    (label, got), = json.loads(capsys.readouterr().out).items()
    assert label.startswith("manifest.csv") and got["load_s"] >= 0
    reference = csv_module_records(exported, exported.parent)
    for split in ("train", "query", "gallery"):
        rows = [r for r in reference if r.split == split]
        assert got[split]["images"] == len(rows)
        assert got[split]["identities"] == len({r.pid for r in rows})
        assert got[split]["cameras"] == len({r.camid for r in rows})
        for cat in {r.category for r in rows}:
            sub = [r for r in rows if r.category == cat]
            assert got[split]["categories"][cat] == {"images": len(sub), "identities": len({r.pid for r in sub}),
                                                     "cameras": len({r.camid for r in sub})}
    # the same world as a Market-1501 folder (the export writes both), guessed from its folders
    assert main(["data", "stats", str(exported.parent)]) == 0
    text = capsys.readouterr().out
    assert "(market1501)" in text and f"| {sum(r.split == 'train' for r in reference):>8,}" in text
    assert main(["data", "stats", str(exported.parent / "nope")]) == 2


# -- RecordTable.take (what --skip-bad-images keeps in core extract, search and explain) -------

@pytest.mark.parametrize("as_list", [False, True], ids=["columns", "list of records"])
def test_take_keeps_every_column_with_its_own_row(as_list):
    """Each field of each kept row, read record by record from the table before `take`: the
    ids (relabelled pid, camid, source, category, domain) must stay with the record they
    belong to, in the order asked for, or embeddings and labels misalign."""
    first = [Record(path=f"a/{i}.jpg", pid=10 + i % 3, camid=i % 4, category=("person", "car")[i % 2],
                    domain=f"d{i % 3}", split="train") for i in range(7)]
    second = [Record(path=f"b/{i}.jpg", pid=50 + i, camid=5 + i, category="car", domain="d9", split="train")
              for i in range(4)]
    table = RecordTable.build([("a", first), ("b", second)], relabel=True)
    if as_list:
        table = RecordTable(records=list(table.records), source_ids=table.source_ids, sources=table.sources,
                            pids=table.pids, camids=table.camids, category_ids=table.category_ids,
                            category_names=table.category_names, domain_ids=table.domain_ids,
                            domain_names=table.domain_names)

    def row(t, i):
        r = t.records[i]
        return (r.path, r.pid, r.camid, r.category, r.domain, int(t.pids[i]), int(t.camids[i]),
                t.sources[int(t.source_ids[i])], t.category_names[int(t.category_ids[i])],
                t.domain_names[int(t.domain_ids[i])])

    rows = [9, 0, 3, 10, 6]  # across both sources, out of order
    kept = table.take(rows)
    assert len(kept) == len(rows)
    assert [row(kept, j) for j in range(len(rows))] == [row(table, i) for i in rows]
    for name in ("pids", "camids", "source_ids", "category_ids", "domain_ids"):
        assert len(getattr(kept, name)) == len(rows), name
    assert len(table.take([])) == 0
