"""Reading boxes out of grounding answers (answers.parse_boxes, pick_box), on answers as
CogVLM's grounding model and other tools write them."""

import numpy as np
import pytest

from reid_vge_labeler.answers import parse_boxes, pick_box


def test_a_cogvlm_answer_with_the_phrase_gives_one_box_on_the_1000_scale():
    boxes = parse_boxes("the head of the person[[312,045,602,201]]")
    np.testing.assert_allclose(boxes, [[0.312, 0.045, 0.602, 0.201]], atol=1e-6)


def test_a_bare_double_bracket_answer_and_a_sentence_around_it():
    assert parse_boxes("[[102,488,905,996]]").shape == (1, 4)
    boxes = parse_boxes("The legs of the person are located at [[102,488,905,996]].")
    np.testing.assert_allclose(boxes, [[0.102, 0.488, 0.905, 0.996]], atol=1e-6)


def test_several_boxes_in_one_bracket_separated_by_semicolons_keep_their_order():
    boxes = parse_boxes("the legs of the person[[081,305,460,962;511,301,918,958]]")
    np.testing.assert_allclose(boxes, [[0.081, 0.305, 0.460, 0.962], [0.511, 0.301, 0.918, 0.958]], atol=1e-6)


def test_several_bracketed_boxes_inside_double_brackets_are_read_too():
    boxes = parse_boxes("[[081,305,460,962];[511,301,918,958]]")
    np.testing.assert_allclose(boxes, [[0.081, 0.305, 0.460, 0.962], [0.511, 0.301, 0.918, 0.958]], atol=1e-6)


def test_boxes_in_separate_brackets_are_all_read():
    boxes = parse_boxes("a head[[300,040,600,200]] and another head[[650,050,900,190]]")
    np.testing.assert_allclose(boxes[:, 0], [0.30, 0.65], atol=1e-6)


def test_plain_pixel_boxes_are_divided_by_the_image_size():
    # a 128 x 256 (width x height) crop
    boxes = parse_boxes("The head is at [40, 12, 88, 70].", image_size=(128, 256))
    np.testing.assert_allclose(boxes, [[40 / 128, 12 / 256, 88 / 128, 70 / 256]], atol=1e-6)


def test_plain_fraction_boxes_and_parentheses():
    boxes = parse_boxes("upper body: (0.12, 0.22, 0.88, 0.61)")
    np.testing.assert_allclose(boxes, [[0.12, 0.22, 0.88, 0.61]], atol=1e-6)


def test_plain_pixel_boxes_without_an_image_size_are_skipped():
    assert parse_boxes("[40, 12, 88, 70]").shape == (0, 4)


def test_double_brackets_win_over_plain_boxes_in_the_same_answer():
    boxes = parse_boxes("[1, 2, 3, 4] the head[[100,100,300,300]]", image_size=(10, 10))
    np.testing.assert_allclose(boxes, [[0.1, 0.1, 0.3, 0.3]], atol=1e-6)


def test_answers_without_coordinates_or_with_broken_groups_hold_no_box():
    assert parse_boxes("I cannot find the legs of the person in this image.").shape == (0, 4)
    assert parse_boxes("[[331,078,668]]").shape == (0, 4)          # three numbers
    assert parse_boxes("[[x0,y0,x1,y1]]").shape == (0, 4)          # the template echoed
    assert parse_boxes("").shape == (0, 4)


def test_a_broken_group_beside_a_good_one_keeps_the_good_one():
    boxes = parse_boxes("[[331,078,668;100,200,300,400]]")
    np.testing.assert_allclose(boxes, [[0.1, 0.2, 0.3, 0.4]], atol=1e-6)


def test_swapped_corners_are_put_in_order_and_overshoot_is_clipped():
    boxes = parse_boxes("[[668,283,331,078]] [[-10,000,1000,1040]]")
    np.testing.assert_allclose(boxes, [[0.331, 0.078, 0.668, 0.283], [0.0, 0.0, 1.0, 1.0]], atol=1e-6)


def test_pick_rules():
    boxes = np.asarray([[0.1, 0.5, 0.4, 0.9], [0.5, 0.4, 0.95, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(pick_box(boxes, "first"), boxes[0])
    np.testing.assert_allclose(pick_box(boxes, "largest"), boxes[1])  # 0.45 x 0.6 > 0.3 x 0.4
    np.testing.assert_allclose(pick_box(boxes, "union"), [0.1, 0.4, 0.95, 1.0])
    assert pick_box(np.zeros((0, 4)), "union") is None
    with pytest.raises(ValueError, match="first, largest, union"):
        pick_box(boxes, "best")
