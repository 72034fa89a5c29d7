"""`core explain`: part-mask overlays, against the output contract ('part_masks' (B, P, N)
over the backbone's patch grid), with a tiny test backbone that predicts such masks."""

import pytest
import torch
from PIL import Image
from torch import nn

from core.cli import main
from core.interfaces import Backbone


class MaskedPatchBackbone(Backbone):
    """Patch embedding + a soft assignment of patches to P parts: "part_masks" (B, P, N),
    "global" the mask-weighted mean of the part features."""

    def __init__(self, ctx, parts: int = 3, dim: int = 16, patch: int = 8) -> None:
        super().__init__()
        h, w = ctx.image_size
        self.patch_grid = (h // patch, w // patch)
        self.feature_dim = dim
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.assign = nn.Linear(dim, parts)

    def forward(self, batch):
        tokens = self.embed(batch.images).flatten(2).transpose(1, 2)  # (B, N, D)
        masks = self.assign(tokens).softmax(dim=-1).transpose(1, 2)    # (B, P, N)
        parts = masks @ tokens / masks.sum(-1, keepdim=True)           # (B, P, D)
        return {"global": parts.mean(1), "tokens": tokens, "part_masks": masks}


@pytest.fixture
def masked_run(tiny_pipeline_config, run_tiny_pipeline, register_component):
    register_component("backbone", "masked-test", MaskedPatchBackbone)
    tiny_pipeline_config["backbone"] = {"name": "masked-test", "parts": 3}
    tiny_pipeline_config["trainer"]["eval_before"] = False
    return run_tiny_pipeline(tiny_pipeline_config).run_dir


def test_explain_draws_image_and_a_heat_map_per_part(masked_run, tmp_path, capsys):
    out = tmp_path / "explain"  # --method auto: the model outputs part masks, so parts
    assert main(["explain", str(masked_run), "--images", "run:query", "--out", str(out), "--limit", "4"]) == 0
    assert "overlays:" in capsys.readouterr().out
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 4 and (out / "index.html").is_file()
    with Image.open(pictures[0]) as picture:  # image + 3 parts + arg-max map, side by side
        assert picture.width >= 5 * 96  # tiles 192 px high at the 32x16 input aspect


def test_masks_per_layer_read_the_last_layer():
    from core.tools.overlays import read_masks

    first, last = torch.zeros(1, 2, 8), torch.rand(1, 2, 8)
    assert torch.equal(read_masks({"part_masks": [first, last]}, "part_masks", (4, 2), "x"),
                       last.reshape(1, 2, 4, 2))


def test_masks_that_do_not_fit_the_patch_grid_are_an_error():
    from core.tools.overlays import MissingMasks, read_masks

    with pytest.raises(MissingMasks, match="8 positions per part but the backbone's patch_grid is \\(3, 3\\)"):
        read_masks({"part_masks": torch.rand(1, 2, 8)}, "part_masks", (3, 3), "x")


def test_parts_on_a_backbone_without_masks_is_a_clear_error(tiny_pipeline_config, run_tiny_pipeline, tmp_path, capsys):
    tiny_pipeline_config["trainer"]["eval_before"] = False
    run_dir = run_tiny_pipeline(tiny_pipeline_config).run_dir
    assert main(["explain", str(run_dir), "--images", "run:query", "--out", str(tmp_path / "x"),
                 "--method", "parts"]) == 2
    err = capsys.readouterr().err
    assert "backbone 'timm' does not output part masks" in err and "'part_masks': (B, P, N)" in err


def test_explain_skipping_a_bad_image_still_draws_limit_images(masked_run, tmp_path, capsys):
    """--limit N took the first N images, then left out the bad ones: a damaged first image
    gave N - 1 pictures though more images were there. Now the next image takes its place,
    and the warning says what was left out of how many checked."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 32), (40 * i, 80, 200 - 40 * i)).save(folder / f"{i + 1:04d}_c1_000.png")
    bad = folder / "0001_c1_000.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # an interrupted copy
    out = tmp_path / "explain"
    assert main(["explain", str(masked_run), "--images", str(folder), "--out", str(out), "--limit", "3",
                 "--skip-bad-images"]) == 0
    assert "warning: left out 1 unreadable image file (of 4 checked)" in capsys.readouterr().err
    assert [p.name for p in sorted(out.glob("*.png"))] == ["0000_0002_c1_000.png", "0001_0003_c1_000.png",
                                                          "0002_0004_c1_000.png"]
