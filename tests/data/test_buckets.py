import pytest
import torch

from ltxdist.data.buckets import Bucket, check_reference_factor, choose_bucket, parse_buckets
from ltxdist.data.media import resize_crop


def test_parse_and_errors_name_the_flag():
    assert parse_buckets("960x544x49; 768x448x121,64x64x1") == [
        Bucket(960, 544, 49),
        Bucket(768, 448, 121),
        Bucket(64, 64, 1),
    ]
    with pytest.raises(
        ValueError, match=r"--buckets: bucket '100x64x17': width and height must be .*multiples of 32"
    ):
        parse_buckets("64x64x17;100x64x17")
    with pytest.raises(ValueError, match=r"--buckets: bucket '64x64x16': frames must be 8n\+1"):
        parse_buckets("64x64x16")
    with pytest.raises(ValueError, match="not of the form WxHxF"):
        parse_buckets("64x64")
    with pytest.raises(ValueError, match="duplicate"):
        parse_buckets("64x64x17;64x64x17")
    with pytest.raises(ValueError, match="empty"):
        parse_buckets(" ; ")


def test_choice_is_aspect_then_frames_then_area():
    b = parse_buckets("960x544x49;768x448x121;512x288x121;544x960x49;512x512x25")
    # 16:9 clip, long: nearest aspect first (960x544 ~1.76, 768x448 ~1.71, 512x288 = 1.78) -> 512x288.
    assert choose_bucket(b, 1920, 1080, 300).name == "512x288x121"
    # Only 49 frames: 121-frame buckets do not fit; nearest aspect among the rest.
    assert choose_bucket(b, 1920, 1080, 60).name == "960x544x49"
    assert choose_bucket(b, 1080, 1920, 60).name == "544x960x49"
    assert choose_bucket(b, 500, 500, 30).name == "512x512x25"
    assert choose_bucket(b, 500, 500, 24) is None  # shorter than every bucket
    # Same aspect: more frames wins, then larger area.
    same = parse_buckets("64x64x17;64x64x33;128x128x33")
    assert choose_bucket(same, 100, 100, 40).name == "128x128x33"
    assert choose_bucket(same, 100, 100, 20).name == "64x64x17"


def test_reference_factor_must_keep_multiples_of_32():
    check_reference_factor(parse_buckets("128x64x17"), 2)
    with pytest.raises(ValueError, match="--reference-downscale-factor 2: bucket 96x64x17"):
        check_reference_factor(parse_buckets("96x64x17"), 2)
    with pytest.raises(ValueError, match=">= 1"):
        check_reference_factor(parse_buckets("64x64x17"), 0)


def test_resize_crop_covers_then_centre_crops():
    # A 40x20 frame with numbered columns: to 32x32 it scales by 1.6 (height-bound) and keeps the middle.
    frame = torch.arange(40, dtype=torch.float32).repeat(20, 1)[..., None].expand(20, 40, 3)
    out = resize_crop((frame * 6).to(torch.uint8), 32, 32)
    assert out.shape == (32, 32, 3) and out.dtype == torch.uint8
    # Centre column of the output comes from the centre of the input (column ~19.5 -> value ~117).
    assert abs(out[16, 16, 0].item() - 19.5 * 6) <= 6
    # Left edge: input column (64-32)/2/1.6 = 10 -> ~60, not 0 (that part was cropped away).
    assert abs(out[16, 0, 0].item() - 10 * 6) <= 6
    same = torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8)
    assert torch.equal(resize_crop(same, 32, 32), same)
