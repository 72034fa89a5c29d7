"""The transform keys the baselines use: random erasing's area range (BoT: 2-40% of the
image) and AutoAugment on a share of the training images (SBS: 10%)."""

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.data.autoaugment import RandomAutoAugment
from core.data.transforms import build_transform


def steps(transform):
    return list(transform.transforms)


def test_erasing_scale_sets_the_erased_share_of_the_image():
    torch.manual_seed(0)
    transform = build_transform(train=True, size=[64, 32], pad=0, flip=0.0, erasing=1.0, erasing_scale=[0.5, 0.5])
    out = transform(Image.new("RGB", (32, 64), (200, 30, 30)))
    erased = (out == 0).all(dim=0).float().mean().item()  # erased pixels take the mean colour: 0 after Normalize
    assert 0.4 < erased < 0.6


def test_autoaugment_is_applied_to_the_asked_share_of_training_images_only():
    with_aa = build_transform(train=True, autoaugment=0.1)
    (apply,) = [s for s in steps(with_aa) if isinstance(s, RandomAutoAugment)]
    assert apply.p == 0.1 and apply.augment.policy == v2.AutoAugmentPolicy.IMAGENET
    assert not any(isinstance(s, RandomAutoAugment) for s in steps(build_transform(train=True)))
    assert not any(isinstance(s, RandomAutoAugment) for s in steps(build_transform(train=False, autoaugment=0.5)))


def test_autoaugment_share_is_the_probability():
    torch.manual_seed(0)
    augment = RandomAutoAugment(0.3)
    image = torch.randint(0, 256, (3, 16, 8), dtype=torch.uint8)
    changed = sum(not torch.equal(augment(image), image) for _ in range(400))
    # AutoAugment itself sometimes returns the image unchanged (e.g. a zero-magnitude op)
    assert 0.15 * 400 < changed <= 0.35 * 400


def test_autoaugment_moves_the_image_and_passes_part_boxes_through():
    torch.manual_seed(0)
    boxes = tv_tensors.BoundingBoxes([[1, 2, 5, 9]], format="XYXY", canvas_size=(16, 8))
    image = tv_tensors.Image(torch.randint(0, 256, (3, 16, 8), dtype=torch.uint8))
    outs = [RandomAutoAugment(1.0)(image, boxes) for _ in range(20)]
    assert all(torch.equal(b, boxes) for _, b in outs)
    assert any(not torch.equal(i, image) for i, _ in outs)


def test_autoaugment_output_is_a_normalised_image_of_the_right_size():
    torch.manual_seed(0)
    out = build_transform(train=True, size=[64, 32], autoaugment=1.0)(Image.new("RGB", (40, 90), (10, 120, 240)))
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32


@pytest.mark.parametrize("key,value,match", [("autoaugment", 1.5, "'autoaugment' is a probability"),
                                             ("erasing_scale", [0.4, 0.2], "'erasing_scale' must be"),
                                             ("erasing_scale", [0.1], "'erasing_scale' must be")])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_transform(train=True, **{key: value})
