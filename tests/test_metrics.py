"""Tests for ambient.metrics: Frechet distance, KID, the FD-MNIST classifier and its cache, clean-fid FID."""
import os
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from scipy.stats import ortho_group

from ambient.eval import metrics


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These small convnets run several times faster on one thread when the 2 CPU cores are shared
    (a preempted OpenMP worker stalls every parallel region); restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# Pure distances

def _random_psd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d + 3))
    return a @ a.T / d


def test_frechet_distance_closed_form_diagonal_and_rotated():
    rng = np.random.default_rng()
    d = 11
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)
    # The distance is invariant under a common rotation (covariances no longer diagonal).
    q = ortho_group.rvs(d, random_state=rng.integers(2**31))
    got_rot = metrics.frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got_rot == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_sqrtm_formula_on_general_covariances():
    rng = np.random.default_rng()
    d = 9
    mu1, mu2, c1, c2 = rng.normal(size=d), rng.normal(size=d), _random_psd(rng, d), _random_psd(rng, d)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("n, f", [(300, 13), (10, 24)])   # full-rank and singular covariances
def test_frechet_distance_of_a_set_with_itself_is_zero(n, f):
    feats = 1e3 * np.random.default_rng().normal(size=(n, f)) + 5e2
    mu, cov = metrics.feature_stats(feats)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-6 * np.trace(cov)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_stats(np.zeros((1, 5)))


def test_kid_single_subset_equals_brute_force_unbiased_mmd():
    rng = np.random.default_rng()
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(7, 5))

    def k(a, b):
        return (a @ b / 5 + 1) ** 3

    m = len(x)
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert metrics.kid(x, y, subset_size=m, num_subsets=1) == pytest.approx(within - 2 * cross, rel=1e-10)


def test_kid_is_near_zero_for_the_same_distribution_and_positive_for_another():
    # Two independent samples of one distribution: the unbiased MMD^2 estimates 0. (A set against itself
    # is not an independent pair: subsets then share points and the estimate is biased below 0.)
    rng = np.random.default_rng()
    a, a2, b = rng.normal(size=(600, 10)), rng.normal(size=(700, 10)), rng.normal(0.4, 1.0, size=(500, 10))
    same = metrics.kid(a, a2, subset_size=250, num_subsets=20)
    diff = metrics.kid(a, b, subset_size=250, num_subsets=20)
    assert diff > 0.3
    assert abs(same) < 0.05 * diff
    with pytest.raises(ValueError, match="equal F"):
        metrics.kid(a, b[:, :3])


# ---------------------------------------------------------------------------------------------
# The FD-MNIST classifier (trained once per test session into a temporary cache folder)

@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ambient_cache")
    net = metrics.get_feature_extractor(path)
    assert not net.from_cache and net.train_seconds > 0
    return path


@pytest.fixture(scope="session")
def mnist():
    return metrics._mnist()


def test_classifier_accuracy_and_cache_reuse(cache_dir):
    acc = metrics.classifier_accuracy(cache_dir)
    assert acc >= 0.95, acc
    path = metrics.classifier_path(cache_dir)
    assert path.is_file() and metrics.CLASSIFIER_VERSION in path.name
    assert [p.name for p in cache_dir.iterdir()] == [path.name]   # no temp file left behind
    a, b = metrics.get_feature_extractor(cache_dir), metrics.get_feature_extractor(cache_dir)
    assert a.from_cache and b.from_cache and a.train_seconds > 0
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    assert a.features(x).shape == (5, 128) and a.logits(x).shape == (5, 10)


def test_unreadable_cache_is_retrained_with_a_warning(tmp_path, monkeypatch):
    def fake_train(device):
        net = metrics.FeatureNet()
        net.train_seconds = 0.5
        return net

    monkeypatch.setattr(metrics, "_train_classifier", fake_train)
    path = metrics.classifier_path(tmp_path)
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable classifier cache"):
        net = metrics.get_feature_extractor(tmp_path)
    assert not net.from_cache
    assert metrics.get_feature_extractor(tmp_path).from_cache


def test_fd_mnist_grows_with_gaussian_noise(cache_dir, mnist):
    images, _ = mnist
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    subset = images[torch.randperm(len(images), generator=gen)[:1000]]
    results = [metrics.fd_mnist(subset + s * torch.randn(subset.shape, generator=gen), cache_dir=cache_dir,
                                kid_subsets=2)
               for s in (0.0, 0.2, 0.3, 0.6)]
    # Noise 0.1 is within a subset's scatter of clean (FD 4.84 against 5.32 clean for one draw; 4.20 against 4.38 in
    # CI); from 0.2 up every level is far apart (clean 3-7, 0.2: 45-80, 0.3: 216-284 over six draws).
    fds = [r["fd_mnist"] for r in results]
    assert all(b > a for a, b in zip(fds, fds[1:])), fds
    clean = results[0]
    assert clean["n"] == 1000 and clean["floor_n"] == 1000 and "floor_note" not in clean
    # Clean real images sit at the real-vs-real floor, far below the noisiest set.
    assert clean["fd_mnist"] < 3 * clean["fd_mnist_floor"] < fds[-1] / 10
    assert clean["class_histogram"].sum() == 1000 and clean["class_histogram"].min() > 50


def test_confident_share_is_the_classifiers_top_probability_above_the_threshold(cache_dir, mnist):
    images, labels = mnist
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    perm = torch.randperm(len(images), generator=gen)
    real = images[perm[:200]]
    a, b = perm[200:800], perm[800:1400]
    pairs = (labels[a] != labels[b]).nonzero()[:, 0][:133]
    blends = (images[a[pairs]] + images[b[pairs]]) / 2          # two different digits overlaid: malformed ones
    results = {name: metrics.fd_mnist(x, cache_dir=cache_dir, kid_subsets=1, n_boot=0)
               for name, x in (("real", real), ("blends", blends), ("mixed", torch.cat([real, blends])))}
    share = {name: r["confident"] for name, r in results.items()}
    with torch.no_grad():           # the same share from the classifier's logits directly
        top = metrics.get_feature_extractor(cache_dir).logits(blends).softmax(1).max(1).values
    assert share["blends"] == pytest.approx(float((top > metrics.CONFIDENT).double().mean()), abs=1e-12)
    assert share["mixed"] == pytest.approx((200 * share["real"] + 133 * share["blends"]) / 333, abs=1e-12)
    assert share["real"] > 0.9 and share["blends"] < 0.7          # measured: 0.97 and 0.40 (one draw)
    assert results["real"]["confident_ref"] > 0.9                   # MNIST-5k itself


def test_fd_mnist_bootstrap_sd_shrinks_with_the_sample_size(cache_dir, mnist):
    images, _ = mnist
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    noisy = images[torch.randperm(len(images), generator=gen)[:2000]]
    noisy = noisy + 0.3 * torch.randn(noisy.shape, generator=gen)
    small, large = (metrics.fd_mnist(noisy[:n], cache_dir=cache_dir, kid_subsets=1, n_boot=100)["fd_mnist_sd"]
                    for n in (200, 2000))
    # ~ 1 / sqrt(n): a ratio of about 3 (median 3.3). An sd from 20 resamples scatters too much: 60 draws gave
    # 1.34-6.7 (one below 1.5); 50 resamples, 300 draws: worst 1.69; 100 resamples, 150 draws: worst 1.93.
    assert 0 < large < small / 1.5, (small, large)
    assert "fd_mnist_sd" not in metrics.fd_mnist(noisy[:50], cache_dir=cache_dir, kid_subsets=1, n_boot=0)
    with pytest.raises(ValueError, match="n_boot"):
        metrics.fd_mnist(noisy[:50], cache_dir=cache_dir, kid_subsets=1, n_boot=1)


def test_fd_mnist_floor_is_capped_and_reference_tensor_works(cache_dir, mnist):
    images, labels = mnist
    r = metrics.fd_mnist(images[:2700], cache_dir=cache_dir, kid_subsets=1)
    assert r["n"] == 2700 and r["floor_n"] == 2500 and "2500" in r["floor_note"]
    ones = images[labels == 1]
    own = metrics.fd_mnist(ones[:300], reference=ones[300:], cache_dir=cache_dir, kid_subsets=1, n=250)
    assert own["n"] == 250 and own["floor_n"] == 100
    assert own["fd_mnist"] < metrics.fd_mnist(ones[:300], cache_dir=cache_dir, kid_subsets=1)["fd_mnist"]
    hist = metrics.class_histogram(ones[:123], cache_dir=cache_dir)
    assert hist.shape == (10,) and hist.sum() == 123 and hist[1] >= 115


def test_fd_mnist_rejects_bad_input(cache_dir):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        metrics.fd_mnist(torch.zeros(10, 3, 32, 32), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="n must be"):
        metrics.fd_mnist(torch.zeros(10, 1, 32, 32), n=11, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.fd_mnist(torch.full((10, 1, 32, 32), float("nan")), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="reference"):
        metrics.fd_mnist(torch.zeros(10, 1, 32, 32), reference="cifar10", cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------
# clean-fid path, with a tiny fixed random network instead of Inception (never a download)

def _tiny_extractor() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 6, 5, stride=3), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    return lambda x: net(x / 255)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _write_pngs(images: torch.Tensor, folder) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, img in enumerate(images):
        pix = ((img[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pix).save(os.path.join(folder, f"{i:05d}.png"))


def test_fid_cleanfid_with_custom_extractor(tmp_path, mnist, no_network):
    images, _ = mnist
    idx = torch.from_numpy(np.random.default_rng().permutation(len(images))[:80])
    real = images[idx]
    _write_pngs(real, tmp_path / "ref")
    with zipfile.ZipFile(tmp_path / "ref.zip", "w") as z:      # EDM dataset layout: PNGs + dataset.json
        for name in sorted(os.listdir(tmp_path / "ref")):
            z.write(tmp_path / "ref" / name, name)
        z.writestr("dataset.json", '{"labels": null}')
    fx = _tiny_extractor()

    def batches(x, size=37):
        return (x[i:i + size] for i in range(0, len(x), size))

    self_fid = metrics.fid_cleanfid(batches(real), tmp_path / "ref", feature_extractor=fx)
    feats = metrics._stream_features(batches(real), fx, 64, torch.device("cpu"))
    assert feats.shape == (80, 24)
    scale = np.trace(metrics.feature_stats(feats)[1])
    assert abs(self_fid) < 1e-6 * scale
    shifted = torch.roll(real, shifts=(5, 3), dims=(2, 3))
    fid_shift = metrics.fid_cleanfid(batches(shifted, 50), tmp_path / "ref", feature_extractor=fx)
    fid_zip = metrics.fid_cleanfid(batches(shifted, 64), tmp_path / "ref.zip", feature_extractor=fx)
    assert fid_shift > 0.2 * scale
    assert fid_zip == pytest.approx(fid_shift, rel=1e-6)
    _write_pngs(shifted, tmp_path / "gen")
    assert metrics.fid_cleanfid(tmp_path / "gen", tmp_path / "ref", feature_extractor=fx) == pytest.approx(
        fid_shift, rel=1e-6)


def test_fid_cleanfid_missing_weights_and_bad_sources(tmp_path, monkeypatch, no_network):
    (tmp_path / "ref").mkdir()
    with pytest.raises(FileNotFoundError, match="no download is attempted"):
        metrics.fid_cleanfid(iter([]), tmp_path / "ref", inception_path=tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match=metrics.INCEPTION_FILE):
        metrics.fid_cleanfid(iter([]), tmp_path / "ref", inception_path=tmp_path)
    fx = _tiny_extractor()
    with pytest.raises(ValueError, match="no images found"):
        metrics.fid_cleanfid(iter([]), tmp_path / "ref", feature_extractor=fx)
    with pytest.raises(FileNotFoundError, match="not found"):
        metrics.fid_cleanfid(iter([]), tmp_path / "missing", feature_extractor=fx)
    _write_pngs(torch.zeros(3, 1, 32, 32), tmp_path / "ref")
    with pytest.raises(ValueError, match="generated batches"):
        metrics.fid_cleanfid(iter([torch.zeros(2, 32, 32)]), tmp_path / "ref", feature_extractor=fx)


# ---------------------------------------------------------------------------------------------
# Any resolution, quantisation, memorisation

def test_fd_mnist_at_16x16_resizes_samples_reference_and_floor_alike(cache_dir, mnist):
    images, _ = mnist
    small = torch.nn.functional.avg_pool2d(images, 2)                    # MNIST-5k at 16 x 16
    assert metrics.classifier_input(small).shape == (5000, 1, 32, 32)
    assert torch.equal(metrics.classifier_input(images), images)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    perm = torch.randperm(5000, generator=gen)
    real, ref = small[perm[:700]], small[perm[700:]]
    clean, noisy = (metrics.fd_mnist(real + s * torch.randn(real.shape, generator=gen), reference=ref,
                                     cache_dir=cache_dir, kid_subsets=1, n_boot=0) for s in (0.0, 0.6))
    # The floor of two 700-image halves itself varies 3.9-10.2 over seeds and real-vs-reference FD 2.3-5.2 (up to
    # 1.65x the floor, measured): near the floor means within 2.5x of it; sigma 0.6 noise is 40x or more above.
    assert clean["floor_n"] == 700 and clean["fd_mnist"] < 2.5 * clean["fd_mnist_floor"]
    assert noisy["fd_mnist"] > 20 * max(clean["fd_mnist"], clean["fd_mnist_floor"])
    with pytest.raises(ValueError, match="same resolution"):
        metrics.fd_mnist(real, reference=images[:100], cache_dir=cache_dir)
    with pytest.raises(ValueError, match="pass reference images of their resolution"):
        metrics.fd_mnist(real, cache_dir=cache_dir)


def test_28x28_images_are_padded_as_mnist_was_and_score_exactly_as_the_32x32_set(cache_dir, mnist):
    """classifier_input pads MNIST's native 28x28 with black as the embedded 32x32 set was padded: the real
    mnist28 images become the 32x32 ones bit for bit, so a 28x28 model is scored against MNIST-5k on the same
    footing as a 32x32 one (same reference, same floor, same numbers)."""
    from ambient.data import load_dataset
    images, _ = mnist
    native = load_dataset("mnist28").signals()
    assert native.shape == (5000, 1, 28, 28)
    assert torch.equal(metrics.classifier_input(native), images)
    at28, at32 = (metrics.fd_mnist(x[:500], cache_dir=cache_dir, kid_subsets=1, n_boot=2) for x in (native, images))
    assert at28.keys() == at32.keys()
    for key in at28:
        np.testing.assert_array_equal(at28[key], at32[key], err_msg=key)
    with pytest.raises(ValueError, match=r"32x32 \(28x28 images are padded to it\), the images are \(24, 24\)"):
        metrics.fd_mnist(native[:10, :, 2:26, 2:26], cache_dir=cache_dir)


def test_quantise_is_what_a_saved_png_holds():
    from ambient.common.images import from_uint8, quantise, to_uint8
    x = torch.randn(7, 1, 5, 3) * 1.5
    q = quantise(x)
    assert q.min() >= -1 and q.max() <= 1.0 + 1e-6
    assert torch.equal(quantise(q), q)                                   # idempotent: already on the 8-bit grid
    u = to_uint8(x)
    assert np.array_equal(u, np.clip(np.floor(x.permute(0, 2, 3, 1).numpy() * 127.5 + 128), 0, 255))
    assert torch.equal(from_uint8(u), torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_memorisation_counts_copies_and_not_new_images(mnist):
    images, _ = mnist
    small = torch.nn.functional.avg_pool2d(images, 2)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    perm = torch.randperm(5000, generator=gen)
    train, held = small[perm[:97]], small[perm[97:397]]
    copies = train[torch.randint(97, (150,), generator=gen)] + 0.02 * torch.randn(150, 1, 16, 16, generator=gen)
    m_copy, m_new = metrics.memorisation(copies, train), metrics.memorisation(held, train)
    # A copy of one of two near-identical training digits sits near both: not every copy is flagged.
    assert m_copy["memorised"] > 0.85 and m_copy["nn_ratio"] < 0.3 and m_copy["n_train"] == 97
    assert m_new["memorised"] < 0.05 and m_new["nn_ratio"] > 0.8
    half = metrics.memorisation(torch.cat([copies[:75], held[:75]]), train)["memorised"]
    assert 0.4 < half <= 0.5 + 0.05
    with pytest.raises(ValueError, match="training images"):
        metrics.memorisation(held, train[:1])


def test_background_noise_recovers_known_noise(mnist):
    from ambient.common.images import quantise
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    square = -torch.ones(333, 1, 13, 13)         # exact answer: noise-free background, no edges
    square[:, :, 4:7, 5:9] = 1
    assert metrics.background_noise(square) == 0
    for r in (0.03, 0.1, 0.2, 0.3):              # clamped at -1 and quantised, as saved samples are
        noisy = quantise(square + r * torch.randn(square.shape, generator=gen))
        assert metrics.background_noise(noisy) == pytest.approx(r, rel=0.04)     # 300 draws: within 2.0%
    images, _ = mnist
    small = torch.nn.functional.avg_pool2d(images[torch.randperm(5000, generator=gen)[:333]], 2)   # 16x16 digits
    r0 = metrics.background_noise(quantise(small))
    assert 0 < r0 < 0.05                         # antialiased edges only: the strokes themselves are masked out
    # Where the noise is well above the edges' r0 the two add in quadrature; near r0 (r = 0.03) they do not,
    # since noise moves edge pixels in and out of the background (300 draws: -17%..+6% there, within 3.7% here).
    for r in (0.1, 0.2, 0.3):
        noisy = quantise(small + r * torch.randn(small.shape, generator=gen))
        assert metrics.background_noise(noisy) == pytest.approx((r0 ** 2 + r ** 2) ** 0.5, rel=0.06)
    with pytest.raises(ValueError, match="background"):
        metrics.background_noise(torch.ones(3, 1, 8, 8))
