"""Each shipped baseline pipeline reads its data set under the protocol of the codebase
whose published numbers docs/model-zoo.md puts beside it, so that a reproduced number is
comparable with the cited one.

MSMT17's training split: fast-reid's reader (fastreid/data/datasets/msmt17.py) trains on
list_train.txt alone unless DATASETS.COMBINEALL (default False), and its model zoo gives
the BoT(R50) and SBS(R50-ibn) rows cited for bot_msmt17 / sbs_msmt17; TransReID's reader
(datasets/msmt17.py, `train += val`) trains on list_train + list_val, and so does AGW's
(ReID-Survey reads a copy whose bounding_box_train/ holds the 32,621 images of both lists).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config.loading import load_pipeline
from core.registry import build_registry
from layout_fixtures import images  # registered by conftest.py

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

#: pipeline -> the list files its cited source trains on
MSMT17_TRAIN_LISTS = {"bot_msmt17": ["list_train.txt"], "sbs_msmt17": ["list_train.txt"],
                      "agw_msmt17": ["list_train.txt", "list_val.txt"],
                      "transreid_msmt17": ["list_train.txt", "list_val.txt"]}


def msmt17_v1(root: Path) -> Path:
    """MSMT17_V1/ with two list_train images and one list_val image of the same identity."""
    base = root / "MSMT17_V1"
    lists = {"list_train.txt": ("train", ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                          "0000/0000_001_05_0303noon_0330_1.jpg 0"]),
             "list_val.txt": ("train", ["0000/0000_002_15_0303afternoon_0761_0.jpg 0"]),
             "list_query.txt": ("test", ["0000/0000_000_03_0113morning_0100_0.jpg 0"]),
             "list_gallery.txt": ("test", ["0000/0000_001_07_0113noon_0200_0.jpg 0"])}
    for name, (folder, lines) in lists.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        (base / name).write_text("\n".join(lines) + "\n")
        for line in lines:
            rel = line.split()[0]
            images(base / folder / rel.split("/")[0], rel.split("/")[1])
    return root


@pytest.mark.parametrize("pipeline", sorted(MSMT17_TRAIN_LISTS))
def test_msmt17_baseline_trains_on_the_lists_of_its_cited_source(pipeline, tmp_path):
    root = msmt17_v1(tmp_path)
    spec = dict(load_pipeline(PIPELINES / f"{pipeline}.yaml").data["data"]["train"][0])
    assert spec.pop("dataset") == "msmt17"
    spec["root"] = str(root)
    train = build_registry().build("dataset", "msmt17", **spec).records("train")
    expected = [line.split()[0].split("/")[1] for name in MSMT17_TRAIN_LISTS[pipeline]
                for line in (root / "MSMT17_V1" / name).read_text().split("\n") if line]
    assert [Path(p).name for p in train.path.to_list()] == expected


#: pipeline -> how its cited source's code resizes (training images, test images): BoT's
#: (reid-strong-baseline data/transforms/build.py) and AGW's (ReID-Survey data/transforms.py)
#: `T.Resize(size)`, torchvision's default bilinear, for both; fast-reid's `T.Resize(size,
#: interpolation=3)`, bicubic, for both (fastreid/data/transforms/build.py); TransReID's
#: training resize bicubic (`interpolation=3`), its test resize `T.Resize(SIZE_TEST)`, bilinear
#: (datasets/make_dataloader.py)
BOTH_BILINEAR, BOTH_BICUBIC = ("bilinear", "bilinear"), ("bicubic", "bicubic")
RESIZE_OF_SOURCE = {"bot_market1501": BOTH_BILINEAR, "bot_veri776": BOTH_BILINEAR, "bot_msmt17": BOTH_BICUBIC,
                    "agw_market1501": BOTH_BILINEAR, "agw_msmt17": BOTH_BILINEAR, "agw_veri776": BOTH_BILINEAR,
                    "sbs_market1501": BOTH_BICUBIC, "sbs_msmt17": BOTH_BICUBIC, "sbs_veri776": BOTH_BICUBIC,
                    "transreid_market1501": ("bicubic", "bilinear"), "transreid_msmt17": ("bicubic", "bilinear"),
                    "transreid_veri776": ("bicubic", "bilinear")}


@pytest.mark.parametrize("name", sorted(RESIZE_OF_SOURCE))
def test_each_baseline_resizes_as_its_cited_source(name):
    from torchvision.transforms import v2

    from core.data.transforms import build_transform

    transform = load_pipeline(PIPELINES / f"{name}.yaml").data["data"]["transform"]
    built = []
    for train in (True, False):
        steps = build_transform(train=train, **transform).transforms
        resize, = [step for step in steps if isinstance(step, v2.Resize)]
        built.append(resize.interpolation.value)
    assert tuple(built) == RESIZE_OF_SOURCE[name], name


def test_test_interpolation_resizes_test_images_only():
    """`test_interpolation` (TransReID: bicubic training, bilinear test resize) changes the test
    transform's resize and not the training one's; an unknown value is refused like `interpolation`."""
    from PIL import Image
    import numpy as np
    from torchvision.transforms import v2
    from torchvision.transforms.functional import InterpolationMode

    from core.data.transforms import build_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (97, 41, 3), dtype=np.uint8))
    test = build_transform(train=False, size=[64, 32], interpolation="bicubic", test_interpolation="bilinear")
    reference = v2.Compose([v2.Resize((64, 32), interpolation=InterpolationMode.BILINEAR, antialias=True),
                            v2.PILToTensor()])(image)
    ours = test(image)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(ours, (reference.float() / 255 - mean) / std, atol=1e-5, rtol=0)
    train = build_transform(train=True, size=[64, 32], pad=0, flip=0.0, interpolation="bicubic",
                            test_interpolation="bilinear")
    resize, = [step for step in train.transforms if isinstance(step, v2.Resize)]
    assert resize.interpolation == InterpolationMode.BICUBIC
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        build_transform(train=False, test_interpolation="cubic")


@pytest.mark.parametrize("transform", [{}, {"interpolation": "bilinear"}, {"test_interpolation": "nearest"},
                                       {"interpolation": "bicubic", "test_interpolation": "bilinear"}])
def test_the_resize_export_json_names_is_the_test_transforms(transform):
    """export.json's `resize` (and the released-weights notes) read transforms.eval_resize: it
    must be the interpolation of the test transform that evaluation builds."""
    from torchvision.transforms import v2

    from core.data.transforms import build_transform, eval_resize

    resize, = [s for s in build_transform(train=False, **transform).transforms if isinstance(s, v2.Resize)]
    assert eval_resize(transform) == resize.interpolation.value
