"""The one WxH parser: shape, range, the single error type, and its callers' contexts."""

from __future__ import annotations

import pytest

from dedgeai.models.backend import GenerationRequest, SpeedProfile
from dedgeai.models.errors import InvalidRequest
from dedgeai.models.sizes import (
    MAX_SIDE_PX,
    MIN_SIDE_PX,
    SizeError,
    format_size,
    parse_size,
    side_problem,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512x512", (512, 512)),
        ("1024X768", (1024, 768)),
        (" 256 x 2048 ", (256, 2048)),
        (f"{MIN_SIDE_PX}x{MAX_SIDE_PX}", (MIN_SIDE_PX, MAX_SIDE_PX)),
    ],
)
def test_good_sizes(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "",
        "big",
        "512",
        "512x",
        "x512",
        "512x512x512",
        "512*512",
        "-512x512",
        "512.0x512",
        "５１２x512",  # full-width digits: str.isdigit says yes, int() agrees, we do not
        "250x256",  # not a multiple of 16
        "240x256",  # below the minimum
        "2064x512",  # above the maximum
        "0x0",
        "9999999x512",
    ],
)
def test_bad_sizes_raise_one_error_with_one_message(text: str) -> None:
    with pytest.raises(SizeError) as caught:
        parse_size(text)
    message = str(caught.value)
    assert "use WxH" in message and "multiple of 16 in 256-2048" in message
    assert repr(text) in message
    assert isinstance(caught.value, InvalidRequest)  # the CLI's exit 2 mapping catches it


def test_non_text_is_a_size_error() -> None:
    with pytest.raises(SizeError):
        parse_size(512)  # type: ignore[arg-type]


def test_shape_only_skips_the_range() -> None:
    assert parse_size("64x48", check_range=False) == (64, 48)
    with pytest.raises(SizeError):
        parse_size("64by48", check_range=False)


def test_format_round_trips() -> None:
    assert format_size(*parse_size("768x1024")) == "768x1024"


def test_side_rule_is_the_request_rule() -> None:
    """GenerationRequest.validate and the parser judge a side alike."""
    for side in (MIN_SIDE_PX - 16, MIN_SIDE_PX, 257, 1024, MAX_SIDE_PX, MAX_SIDE_PX + 16):
        request = GenerationRequest(prompt="a cat", width=side, height=512)
        if side_problem(side) is None:
            request.validate()
            assert parse_size(f"{side}x512") == (side, 512)
        else:
            with pytest.raises(InvalidRequest, match="width must be a multiple of 16"):
                request.validate()
            with pytest.raises(SizeError):
                parse_size(f"{side}x512")


def test_speed_profile_reads_its_keys_with_the_parser() -> None:
    profile = SpeedProfile(steps_per_second={"512x512": 4.0}, backend="test")
    assert profile.at(512, 512) == 4.0
    assert profile.at(1024, 1024) == pytest.approx(1.0)  # 4x the pixels, a quarter the rate
