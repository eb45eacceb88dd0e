import pytest
import torch

from nas_kd.views import parse_view


def test_resize_and_channels_make_the_teachers_view_of_small_grayscale_images() -> None:
    view = parse_view([{"resize": [16, 16]}, {"channels": 3}])
    x = torch.rand(2, 1, 8, 8)
    out = view(x)
    assert out.shape == (2, 3, 16, 16) and view.output_shape((1, 8, 8)) == (3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 2])  # gray repeated, not invented colour
    assert view.spec() == [{"resize": [16, 16]}, {"channels": 3}]


def test_grayscale_is_luma_and_crop_keeps_the_centre() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[:, 1] = 1.0  # pure green
    assert torch.allclose(parse_view(["grayscale"])(x), torch.full((1, 1, 4, 4), 0.587))
    y = torch.arange(16.0).view(1, 1, 4, 4)
    assert parse_view([{"center_crop": 0.5}])(y).flatten().tolist() == [5.0, 6.0, 9.0, 10.0]


def test_unknown_steps_are_named() -> None:
    with pytest.raises(ValueError, match="unknown view step 'blur'"):
        parse_view(["blur"])
    with pytest.raises(ValueError, match="list of steps"):
        parse_view("grayscale")
