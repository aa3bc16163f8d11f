import numpy as np
import pytest

from specwidgets.core.inputs import as_image, as_image_stack, mask_ranges, mask_rows


def test_stack_accepts_2d_and_3d():
    stack, was_2d = as_image_stack(np.ones((4, 5)))
    assert stack.shape == (1, 4, 5) and was_2d
    stack, was_2d = as_image_stack(np.ones((2, 4, 5)))
    assert stack.shape == (2, 4, 5) and not was_2d


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((1, 2, 3, 4)), np.float64(3.0)])
def test_stack_rejects_other_dimensions(bad):
    with pytest.raises(ValueError, match="2D image .* or a 3D stack"):
        as_image_stack(bad)


def test_stack_rejects_none_and_text():
    with pytest.raises(TypeError, match="None"):
        as_image_stack(None)
    with pytest.raises(TypeError, match="numeric"):
        as_image_stack([["a", "b"]])


def test_image_must_be_2d():
    with pytest.raises(ValueError, match="must be a 2D image"):
        as_image(np.ones(10), "arc")


def test_several_arcs_at_once_are_told_to_be_summed():
    """One arc frame per lamp, passed together (trial G): the error says how to make one arc of them."""
    import specwidgets as sw

    arcs = np.ones((2, 20, 30))
    with pytest.raises(ValueError, match=r"got 3D .* summed: np.sum\(arcs, axis=0\).*average_matching_files"):
        sw.find_cal_lines(arcs)
    with pytest.raises(ValueError, match="summed"):
        sw.generate_warp_model(arcs, [5.0, 15.0])
    with pytest.raises(ValueError) as raised:
        as_image(np.ones((2, 3, 4)), "flat")
    assert "summed" not in str(raised.value)


def test_mask_forms():
    assert mask_ranges((None, None), 10) == []
    assert mask_ranges(None, 10) == []
    assert mask_ranges((2, 5), 10) == [(2, 5)]
    assert mask_ranges([(6, 8), (1, 3)], 10) == [(1, 3), (6, 8)]
    assert mask_ranges((None, 4), 10) == [(0, 4)]
    rows = mask_rows([(1, 3), (6, 8)], 10)
    assert rows.tolist() == [False, True, True, False, False, False, True, True, False, False]


@pytest.mark.parametrize(
    "mask, message",
    [
        ((5, 2), "reversed"),
        ((3, 3), "empty"),
        ((-1, 4), "out of range"),
        ((2, 11), "out of range"),
        ((0, 10), "covers every one of the 10 rows"),
        ([(0, 6), (5, 10)], "covers every"),
    ],
)
def test_bad_masks(mask, message):
    with pytest.raises(ValueError, match=message):
        mask_ranges(mask, 10)


@pytest.mark.parametrize("mask", ["rows", (1.5, 3), [(1, 2), 3]])
def test_mask_type_errors(mask):
    with pytest.raises(TypeError, match="mask_region"):
        mask_ranges(mask, 10)
