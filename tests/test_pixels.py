"""The one conversion between 8-bit pixels and the model's [-1, 1] scale (ambient.common.images, docs/design.md
"Pixels"): to the model u / 127.5 - 1, back trunc(clamp(x 127.5 + 128)) (to the nearest byte), and every reader of a
data set's images through its source, which knows both formats."""
import numpy as np
import torch

from ambient.common.images import from_uint8, quantise, to_signal, to_uint8
from ambient.data import AmbientDataset, load_dataset


def test_every_byte_survives_the_round_trip_in_both_precisions():
    u = torch.arange(256, dtype=torch.uint8)
    for dtype in (torch.float32, torch.float64):
        x = to_signal(u, dtype)
        assert x.dtype == dtype and x[0] == -1 and x[-1] == 1
        torch.testing.assert_close(x.double(), u.double() / 127.5 - 1, rtol=0, atol=1e-7)
        back = to_uint8(x.reshape(1, 1, 16, 16).float())
        np.testing.assert_array_equal(back.reshape(-1), u.numpy())


def test_back_to_bytes_rounds_to_the_nearest_byte_and_clips():
    k = torch.randint(0, 255, (50,)).double()
    for offset, expected in ((0.49, k), (0.51, k + 1), (-0.49, k), (0.0, k)):
        x = ((k + offset) / 127.5 - 1).reshape(-1, 1, 1, 1)
        np.testing.assert_array_equal(to_uint8(x).reshape(-1), expected.clamp(0, 255).numpy())
    wild = torch.tensor([-3.0, -1.0001, 1.0001, 7.0, float("inf")]).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(to_uint8(wild).reshape(-1), [0, 0, 255, 255, 255])


def test_layouts_and_quantise():
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)       # N, H, W, C
    images = from_uint8(pixels)
    assert images.shape == (3, 3, 5, 7) and images.dtype == torch.float32
    np.testing.assert_array_equal(to_uint8(images), pixels)
    x = torch.rand(4, 1, 6, 6) * 2.4 - 1.2
    q = quantise(x)
    assert torch.equal(quantise(q), q) and q.min() >= -1 and q.max() <= 1
    assert (q - x.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6


def test_a_data_set_gives_its_images_on_the_model_scale_in_either_format():
    base = load_dataset("digits", max_size=40)
    signals = base.signals()
    assert signals.dtype == torch.float32 and signals.shape == (40, 1, 8, 8)
    assert torch.equal(signals, to_signal(torch.stack([base[i][0] for i in range(40)])))
    # AmbientDataset's clean images are the same numbers (computed in float64, rounded once to float32).
    ds = AmbientDataset(base, n_clean=40, n_noisy=0)
    clean = torch.stack([ds[i]["image"] for i in range(40)])
    assert (clean - signals).abs().max() <= 1e-7
