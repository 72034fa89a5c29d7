"""The transform keys the baselines use: random erasing's area range (BoT: 2-40% of the
image) and AutoAugment on a share of the training images (SBS: 10%); colour jitter and
erasing with a random solid colour (the Instruct-ReID authors' training images)."""

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


def test_random_fill_erases_a_box_with_one_solid_colour_drawn_per_image():
    """The authors' RandomSizedEarserImage pastes an RGB colour, each channel uniform in
    0..255, before ToTensor: after normalisation the box holds (c / 255 - mean) / std, one
    colour for the whole box, a different colour in each image."""
    from core.data.transforms import NORMS

    mean, std = (torch.tensor(v).view(3, 1) for v in NORMS["imagenet"])
    transform = build_transform(train=True, size=[64, 32], pad=0, flip=0.0, erasing=1.0, erasing_fill="random",
                                erasing_scale=[0.1, 0.2])
    image = Image.new("RGB", (32, 64), (200, 30, 30))
    plain = build_transform(train=False, size=[64, 32])(image)
    colours = []
    for seed in range(200):
        torch.manual_seed(seed)
        out = transform(image)
        changed = (out != plain).any(0)
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        box = out[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].reshape(3, -1)
        rgb = (box * std + mean) * 255  # back to 0..255
        assert torch.allclose(rgb, rgb[:, :1].expand_as(rgb), atol=1e-3)  # one solid colour
        assert torch.allclose(rgb[:, 0], rgb[:, 0].round(), atol=1e-3)  # an 8-bit colour
        colours.append(rgb[:, 0].round())
    colours = torch.stack(colours)
    assert colours.min() >= 0 and colours.max() <= 255
    # uniform on 0..255 per channel: mean 127.5, sd 73.9; 200 draws put the mean within ~±15
    assert torch.all((colours.mean(0) - 127.5).abs() < 20) and len({tuple(c.tolist()) for c in colours}) > 190


def test_colour_jitter_is_torchvisions_before_the_resize():
    """`colour_jitter: [b, c, s, h]` = torchvision's ColorJitter(b, c, s, h) on the image as
    loaded, then the rest of the transform (the authors' order)."""
    from core.data.transforms import NORMS

    image = Image.fromarray(torch.randint(0, 256, (40, 20, 3), dtype=torch.uint8).numpy())
    transform = build_transform(train=True, size=[32, 16], pad=0, flip=0.0, colour_jitter=[0.5, 0.5, 0.5, 0.4])
    reference = v2.Compose([v2.ColorJitter(0.5, 0.5, 0.5, 0.4), v2.Resize((32, 16), interpolation=v2.InterpolationMode.BICUBIC,
                                                                       antialias=True),
                            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*NORMS["imagenet"])])
    outs = []
    for seed in range(3):
        torch.manual_seed(seed)
        got = transform(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(got, reference(image))
        outs.append(got)
    assert not torch.equal(outs[0], outs[1])  # the jitter is drawn per image
    assert not any(isinstance(s, v2.ColorJitter) for s in steps(build_transform(train=False, colour_jitter=[0.5] * 4)))


@pytest.mark.parametrize("key,value,match", [("autoaugment", 1.5, "'autoaugment' is a probability"),
                                             ("erasing_scale", [0.4, 0.2], "'erasing_scale' must be"),
                                             ("erasing_scale", [0.1], "'erasing_scale' must be"),
                                             ("erasing_fill", "noise", "'erasing_fill' must be one of mean, random"),
                                             ("colour_jitter", [0.5, 0.5], "'colour_jitter' must be"),
                                             ("colour_jitter", [0.5, 0.5, 0.5, 0.6], "hue <= 0.5")])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_transform(train=True, **{key: value})
