"""The OmniReID++ datalist reader (`omnireid`): the authors' release format, one
'<image> <instruction> <pid> <clothes id> [<camera>]' a line, on tiny fixtures laid out as
their release is (COCAS+ Real2 clothes-template and attribute lists, CUHK-PEDES with its
caption JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.data.layouts.omnireid import OmniReIDList


def write_images(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (10, 120, 200)).save(root / name)


def real2_tree(root: Path) -> Path:
    """COCAS+ Real2 as in OmniReID++: images, clothes templates, datalist/ lists."""
    write_images(root, "query/0032_c3_7.jpg", "gallery/0032_c1_2.jpg", "gallery/0040_c2_1.jpg",
                 "clothes/0032_2.jpg", "clothes/0040_1.jpg")
    lists = root / "datalist"
    lists.mkdir()
    (lists / "query.txt").write_text("query/0032_c3_7.jpg clothes/0032_2.jpg 32 2 3\n")
    (lists / "gallery.txt").write_text("gallery/0032_c1_2.jpg clothes/0032_2.jpg 32 2 1\n"
                                       "gallery/0040_c2_1.jpg clothes/0040_1.jpg 40 1 2\n\n")
    (lists / "query_attr.txt").write_text("query/0032_c3_7.jpg 0032_2 32 2 3\n")
    (root / "attr.json").write_text(json.dumps({"0032_2": "The person wears a grey hoodie."}))
    return root


def test_clothes_template_lists(tmp_path):
    data = OmniReIDList(str(real2_tree(tmp_path / "real2")), query="datalist/query.txt",
                        gallery="datalist/gallery.txt", instruction="image", name="cocas_real2")
    assert data.records("train") == []
    (q,) = data.records("query")
    assert (q.pid, q.camid, q.extras["clothes_id"], q.extras["instruction_image"]) == (32, 3, 2, "clothes/0032_2.jpg")
    assert q.path == str(tmp_path / "real2" / "query/0032_c3_7.jpg") and q.domain == "cocas_real2"
    assert [r.pid for r in data.records("gallery")] == [32, 40]
    assert data.load_image(q).size == (8, 16)


def test_text_lists_read_their_json(tmp_path):
    root = real2_tree(tmp_path / "real2")
    data = OmniReIDList(str(root), query="datalist/query_attr.txt", texts="attr.json", instruction="text")
    (q,) = data.records("query")
    assert q.extras["caption"] == "The person wears a grey hoodie." and q.extras["instruction_ref"] == "0032_2"


def test_lists_without_cameras_never_share_one_between_query_and_gallery(tmp_path):
    root = tmp_path / "cuhk_pedes"
    write_images(root, "imgs/a.jpg", "imgs/b.jpg")
    (root / "test_query.txt").write_text("imgs/a.jpg 0 7 0\n")
    (root / "test_gallery.txt").write_text("imgs/b.jpg 1 7 0\n")
    (root / "caption.json").write_text(json.dumps({"0": "a man in red", "1": "a man in red shoes"}))
    data = OmniReIDList(str(root), query="test_query.txt", gallery="test_gallery.txt", texts="caption.json",
                        instruction="text")
    assert data.records("query")[0].camid != data.records("gallery")[0].camid


def test_errors_name_the_file_line_and_format(tmp_path):
    root = real2_tree(tmp_path / "real2")
    (root / "bad.txt").write_text("query/0032_c3_7.jpg clothes/0032_2.jpg 32\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected '<image> <instruction> <pid> <clothes id>"):
        OmniReIDList(str(root), query="bad.txt").records("query")
    with pytest.raises(FileNotFoundError, match="query file not found"):
        OmniReIDList(str(root), query="nope.txt")
    (root / "miss.txt").write_text("query/0032_c3_7.jpg 9999 32 2 3\n")
    with pytest.raises(ValueError, match=r"miss\.txt:1: instruction key '9999' is not in"):
        OmniReIDList(str(root), query="miss.txt", texts="attr.json", instruction="text").records("query")
    with pytest.raises(ValueError, match="needs `texts`"):
        OmniReIDList(str(root), query="datalist/query.txt", instruction="text")
    with pytest.raises(ValueError, match="no list given"):
        OmniReIDList(str(root))
