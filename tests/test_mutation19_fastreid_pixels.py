"""fast-reid's saved pixel_mean / pixel_std against the pipeline's normalisation
(core.released_weights.fastreid.check_pipeline) for files saved in half precision: fast-reid's
ImageNet statistics (0.485 x 255, ...) rounded to float16 or bfloat16 are still ImageNet's, while
a mean one grey level off is another normalisation."""

import pytest
import torch

from core.released_weights import WeightsMismatch, fastreid

IMAGENET19 = ([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255])
PROTOCOL19 = {"data": {"transform": {"norm": "imagenet", "interpolation": "bicubic"}}}


def pixels19(mean, std, dtype) -> dict[str, torch.Tensor]:
    return {"pixel_mean": torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1).to(dtype),
            "pixel_std": torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1).to(dtype)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_imagenet_statistics_saved_in_any_float_precision_are_imagenets(dtype):
    assert fastreid.check_pipeline(pixels19(*IMAGENET19, dtype), PROTOCOL19) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("key", ["pixel_mean", "pixel_std"])
def test_statistics_one_grey_level_off_are_refused(dtype, key):
    mean, std = ([v for v in part] for part in IMAGENET19)
    (mean if key == "pixel_mean" else std)[1] += 1.0
    with pytest.raises(WeightsMismatch, match=key):
        fastreid.check_pipeline(pixels19(mean, std, dtype), PROTOCOL19)
