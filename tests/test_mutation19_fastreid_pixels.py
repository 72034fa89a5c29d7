"""fast-reid's saved pixel_mean / pixel_std against the pipeline's normalisation
(core.released_weights.fastreid.check_pipeline) for files saved in half precision: fast-reid's
ImageNet statistics (0.485 x 255, ...) rounded to float16 or bfloat16 are still ImageNet's, while
a mean one grey level off is another normalisation. Also the note on a last stride other than
the model zoo's, which the file cannot record."""

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


@pytest.mark.parametrize("last_stride, noted", [(2, True), (1, False)])
def test_a_last_stride_other_than_the_model_zoos_is_a_note(last_stride, noted):
    """Review 19 mutation: the last-stride note dropped passed every test. fast-reid's model zoo
    configs (configs/Base-bagtricks.yml) set MODEL.BACKBONE.LAST_STRIDE 1; the file cannot say it."""
    from core.context import BuildContext
    from core.models.bnneck import BNNeckHead
    from core.models.resnet import ReIDResNet
    from core.pipeline import ReIDModel
    from tests.test_released_weights_fastreid import KEYS, numbered

    ctx = BuildContext(num_identities=751)
    backbone = ReIDResNet(ctx, arch="resnet50", last_stride=last_stride, stem_maxpool="ceil")
    ctx.feature_dim = backbone.feature_dim
    model = ReIDModel(backbone, BNNeckHead(ctx, classifier=False)).eval()
    notes = fastreid.convert(numbered(KEYS["bot"]), model).notes
    assert any("backbone.last_stride=1" in n for n in notes) is noted, notes
