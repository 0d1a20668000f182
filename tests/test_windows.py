"""Per-image noise windows (docs/design.md, "Per-image noise windows"): sigma_tn in dataset.json and its errors, the
sigma-first sampler's construction and joint distribution of (image, sigma), determinism over world sizes, micro-batches
and resume, the wasted draws the log counts, and the default left as it was."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.integrate import quad
from scipy.stats import norm
from test_distributed import FAST, assert_close_weights, run, weights
from test_noisy_data import _edit_meta, _random_set, _zip_folder
from torch.utils.data import default_collate

from ambient.data import AmbientDataset, make_dataset
from ambient.data.order import EpochIndexed, GlobalOrderSampler
from ambient.data.sources import load_dataset
from ambient.data.streams import Stream, philox
from ambient.io.checkpoint import latest_checkpoint
from ambient.model import AmbientLoss, build_network, sample_sigma
from ambient.train import build_state, cli, train_step
from ambient.train import train as run_training
from ambient.train.loop import draw_counts
from ambient.train.windows import SigmaFirstSampler

P_MEAN, P_STD = -1.2, 1.2


def _fresh_windows(rng: np.random.Generator, n: int, clean: bool) -> np.ndarray:
    """n windows: repeated levels (ties) and continuous ones, some clean (0) if `clean`."""
    windows = np.where(rng.random(n) < 0.5, rng.choice([0.05, 0.2, 0.7, 1.9], n), rng.uniform(0.01, 3.0, n))
    if clean:
        windows[rng.random(n) < 0.3] = 0.0
        windows[0] = 0.0
    return windows


@pytest.mark.parametrize("clean", [True, False])
def test_each_pair_is_the_construction_of_its_draws(clean):
    rng = np.random.default_rng()
    n, batch, seed = int(rng.integers(20, 60)), 37, int(rng.integers(2**32))
    windows = _fresh_windows(rng, n, clean)
    sampler = SigmaFirstSampler(windows, batch, 0, 1, seed, P_mean=P_MEAN, P_std=P_STD)
    floor = windows.min()
    lower = norm.cdf((math.log(floor) - P_MEAN) / P_STD) if floor > 0 else 0.0
    for step in range(3):
        s, index, w = sampler.draws(step)
        draws = philox(seed, Stream.WINDOW, step)
        z, u = draws.standard_normal(batch), draws.random(batch)
        # s: the float64 inverse CDF of the log-normal above the lowest window, to float32 rounding
        reference = np.exp(P_MEAN + P_STD * norm.ppf(lower + (1 - lower) * norm.cdf(z)))
        assert s.dtype == np.float32
        np.testing.assert_allclose(s, np.maximum(reference, floor), rtol=1e-6)
        # the image: element floor(u k) of the k images admissible at s (the float32 level the loss gets), ascending
        # by (window, index); so no pair has s < sigma_tn
        for j in range(batch):
            admissible = sorted((w, i) for i, w in enumerate(windows) if w <= float(s[j]))
            assert index[j] == admissible[int(u[j] * len(admissible))][1] and w[j] == len(admissible) / n
        assert (windows[index] <= s.astype(np.float64)).all()


def test_pairs_follow_the_joint_distribution():
    """P(s in bin b, image in group g) = P(s in b) n_g [w_g <= low_b] / N(b) over the bins between the windows,
    for 10% clean, 60% at 0.2 and 30% at 0.7 (a fresh seed). Bounds hold with probability >= 1 - 1e-9 per check:
    DKW for the distribution of s (P(sup|F_M - F| > e) <= 2 exp(-2 M e^2)), Hoeffding with a union bound over
    the 9 cells."""
    sizes, levels = np.array([500, 3000, 1500]), np.array([0.0, 0.2, 0.7])
    windows = np.repeat(levels, sizes)
    group = np.repeat(np.arange(3), sizes)
    seed, batch, steps = int(np.random.default_rng().integers(2**32)), 20_000, 10
    sampler = SigmaFirstSampler(windows, batch, 0, 1, seed, P_mean=P_MEAN, P_std=P_STD)
    s, index, _ = (np.concatenate(x) for x in zip(*(sampler.draws(t) for t in range(steps))))
    m = len(s)
    s_sorted = np.sort(s.astype(np.float64))
    cdf = norm.cdf((np.log(s_sorted) - P_MEAN) / P_STD)
    ks = max(np.max(np.arange(1, m + 1) / m - cdf), np.max(cdf - np.arange(m) / m))
    assert ks < math.sqrt(math.log(2 / 1e-9) / (2 * m)), ks
    edges = np.append(levels, np.inf)
    bin_of = np.searchsorted(edges, s, side="right") - 1
    t = math.sqrt(math.log(2 * 9 / 1e-9) / (2 * m))
    for b in range(3):
        p_bin = norm.cdf((math.log(edges[b + 1]) - P_MEAN) / P_STD) - (
            norm.cdf((math.log(edges[b]) - P_MEAN) / P_STD) if b else 0.0)
        admissible = sizes * (levels <= edges[b])
        for g in range(3):
            expected = p_bin * admissible[g] / admissible.sum()
            observed = np.mean((bin_of == b) & (group[index] == g))
            assert abs(observed - expected) < t, (b, g, observed, expected)


@pytest.mark.parametrize("factor", [False, True])
def test_the_factor_gives_the_image_first_objective(factor):
    """A per-image loss l_i(s) = c_i / (1 + s) in [0, 1]: the image-first objective (1/N) sum_i E_s[[s >= w_i] l_i(s)]
    is E[w l] under the sigma-first draws with the factor, and E[l] without it (s_floor = 0 here, so E[l] is the
    integral of p(s) lbar(s)); both by quadrature against a Monte Carlo mean of M draws, Hoeffding's bound right with
    probability >= 1 - 1e-9. The two objectives differ by far more than that bound (checked too)."""
    rng = np.random.default_rng()
    n, batch = int(rng.integers(30, 80)), 50_000
    windows, c = _fresh_windows(rng, n, clean=True), rng.random(n)
    sampler = SigmaFirstSampler(windows, batch, 0, 1, int(rng.integers(2**32)), P_mean=P_MEAN, P_std=P_STD)
    s, index, w = (np.concatenate(x) for x in zip(*(sampler.draws(t) for t in range(4))))
    loss = c[index] / (1 + s.astype(np.float64))

    def level(lo, hi, f):     # integral of p(s) f(s) over [lo, hi), ln s = P_MEAN + P_STD x, x ~ N(0, 1)
        a = -12 if lo == 0 else max((math.log(lo) - P_MEAN) / P_STD, -12)    # |x| > 12: mass < 1e-32
        b = 12 if hi == np.inf else min((math.log(hi) - P_MEAN) / P_STD, 12)
        return quad(lambda x: norm.pdf(x) * f(math.exp(P_MEAN + P_STD * x)), a, b)[0]

    image_first = np.mean([c[i] * level(windows[i], np.inf, lambda v: 1 / (1 + v)) for i in range(n)])
    edges = np.append(np.unique(windows), np.inf)          # A(s) is constant between consecutive windows
    sigma_first = sum(level(lo, hi, lambda v: 1 / (1 + v)) * c[windows <= lo].mean()
                      for lo, hi in zip(edges, edges[1:]))
    bound = math.sqrt(math.log(2 / 1e-9) / (2 * len(s)))
    measured = np.mean(w * loss) if factor else np.mean(loss)
    assert abs(measured - (image_first if factor else sigma_first)) < bound
    assert abs(image_first - sigma_first) > 3 * bound, (image_first, sigma_first)


def test_sampler_is_the_same_for_any_world_size_and_resume():
    rng = np.random.default_rng()
    windows, batch, seed, steps = _fresh_windows(rng, 29, clean=True), 12, int(rng.integers(2**32)), 5
    one = SigmaFirstSampler(windows, batch, 0, 1, seed, P_mean=P_MEAN, P_std=P_STD)
    whole = [item for item, _ in zip(one, range(steps * batch))]
    assert {e for _, e, _ in whole} == {p // 29 for p in range(steps * batch)}
    for world in (2, 3, 4):
        k = batch // world
        parts = [list(zip(range(steps * k), SigmaFirstSampler(windows, batch, r, world, seed, P_mean=P_MEAN,
                                                                P_std=P_STD))) for r in range(world)]
        joined = [parts[r][t * k + j][1] for t in range(steps) for r in range(world) for j in range(k)]
        assert joined == whole
    resumed = SigmaFirstSampler(windows, batch, 0, 1, seed, P_mean=P_MEAN, P_std=P_STD, start=2 * batch)
    assert [item for item, _ in zip(resumed, range(batch))] == whole[2 * batch:3 * batch]


WINDOWED = FAST + ["--sigma-min-per-image", "--snap-kimg", "0.08"]


def _config(run_dir, *flags):
    return cli.parse_args(WINDOWED + ["--run-dir", str(run_dir), *flags])


def test_training_is_exact_on_resume_and_the_same_on_two_processes(tmp_path):
    straight = run_training(_config(tmp_path / "straight", "--kimg", "0.16"))
    part = run_training(_config(tmp_path / "part", "--kimg", "0.08"))
    run_training(_config(tmp_path / "part", "--resume", str(part), "--kimg", "0.16"))
    for name in ("net.safetensors", "ema.safetensors"):
        a, b = (load_file(latest_checkpoint(r) / name) for r in (straight, part))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert len(log) == 5 and all(r["wasted_draws"] == r["wasted_draws_of_noisy"] == 0.0 for r in log)
    two = tmp_path / "two"
    proc = run(WINDOWED + ["--run-dir", str(two), "--kimg", "0.16", "--batch-gpu", "4"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_weights(weights(straight), weights(two))


def test_the_step_weighs_the_backward_pass_not_the_logged_loss():
    """With --window-factor the gradients are those of sum_i w_i l_i: weights of 1/2 (a power of two, so exactly)
    halve every gradient of the unweighted step; the logged losses are the unweighted ones in both."""
    cfg = cli.parse_args(["--data", "digits", "--model-channels", "8", "--batch", "8", "--precision", "fp32",
                          "--sigma-min-per-image", "--window-factor"])
    ds = make_dataset(**cfg.data_options())
    sampler = SigmaFirstSampler(ds.sigma_tn_of, cfg.batch, 0, 1, cfg.seed, P_mean=P_MEAN, P_std=P_STD, factor=True)
    items = default_collate([EpochIndexed(ds)[key] for key, _ in zip(sampler, range(cfg.batch))])
    grads, losses = [], []
    for weight in (None, 0.5):
        state = build_state(cfg, cfg.network_kwargs(ds.resolution, ds.num_channels, 0), torch.device("cpu"),
                            (ds.num_channels, ds.resolution, ds.resolution))
        state.distribute(rank=0, world_size=1)
        batch = {k: v for k, v in items.items() if k != "weight"}
        stats = train_step(state, [batch if weight is None else {**batch, "weight": torch.full((8,), weight)}], 0)
        grads.append([p.grad for p in state.net.parameters()])
        losses.append(stats.loss)
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a * 0.5, b) for a, b in zip(*grads))


def test_wasted_draws_are_the_clamped_share_of_noisy_draws():
    """Under clamp a noisy image's draw is wasted with probability Phi((ln sigma_n - P_mean) / P_std) (0.369 at 0.2);
    Hoeffding over M draws, a bound right with probability >= 1 - 1e-9; truncate and the windows waste none."""
    m = 100_000
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    sigma_n = torch.where(torch.rand(m, generator=gen) < 0.1, 0.0, 0.2).float()
    normal = torch.randn(m, generator=gen)
    total, noisy, wasted = draw_counts(sample_sigma(sigma_n, normal, mode="clamp"), sigma_n).tolist()
    expected = norm.cdf((math.log(float(np.float32(0.2))) - P_MEAN) / P_STD)
    assert total == m and noisy == (sigma_n > 0).sum()
    assert abs(wasted / noisy - expected) < math.sqrt(math.log(2 / 1e-9) / (2 * noisy))
    assert draw_counts(sample_sigma(sigma_n, normal, mode="truncate"), sigma_n)[2] == 0
    sampler = SigmaFirstSampler(sigma_n.double().numpy(), m, 0, 1, 0, P_mean=P_MEAN, P_std=P_STD)
    s, index, _ = sampler.draws(0)
    assert draw_counts(torch.from_numpy(s), sigma_n[index])[2] == 0


def test_the_image_first_draw_is_unchanged():
    """On by default; with --no-sigma-min-per-image the data order's items (no "sigma"), and a loss handed the levels
    it would draw is bitwise the loss that draws them."""
    assert cli.parse_args([]).sigma_min_per_image is True
    assert cli.parse_args(["--no-sigma-min-per-image"]).sigma_min_per_image is False
    ds = AmbientDataset(load_dataset("digits"), n_clean=50, seed=3)
    assert (ds.sigma_tn_of == ds.sigma_n_of).all() and "sigma_tn" not in ds.describe()
    keys = [key for key, _ in zip(GlobalOrderSampler(len(ds), 8, 0, 1, seed=3), range(8))]
    assert all("sigma" not in EpochIndexed(ds)[key] for key in keys)
    torch.manual_seed(0)
    net = build_network(preset="tiny", img_resolution=8, img_channels=1, model_channels=8)
    y = torch.stack([EpochIndexed(ds)[key]["image"] for key in keys])
    sigma_n = torch.tensor([EpochIndexed(ds)[key]["sigma_n"] for key in keys]).float()
    normal, eps = torch.randn(8), torch.randn_like(y)
    loss_fn = AmbientLoss(backend="torch")
    drawn = loss_fn(net, y, sigma_n, normal, seed=5, eps=eps)
    handed = loss_fn(net, y, sigma_n, normal, seed=5, eps=eps, sigma=sample_sigma(sigma_n, normal))
    assert torch.equal(drawn[0], handed[0]) and torch.equal(drawn[1], handed[1])


def _add_windows(extra):
    """An edit of dataset.json adding "sigma_tn" = sigma_n + extra(k) for image k."""
    return lambda meta: meta.__setitem__("sigma_tn", [[name, s + extra(k)] for k, (name, s) in
                                                      enumerate(meta["sigma_n"])])


def test_windows_read_back_from_folder_and_zip(tmp_path):
    folder, _, sigmas, _ = _random_set(tmp_path)
    extra = np.random.default_rng().uniform(0, 0.5, len(sigmas))
    extra[3] = 0.0
    _edit_meta(folder, _add_windows(lambda k: float(extra[k])))
    for path in (folder, _zip_folder(folder, tmp_path / "set.zip")):
        ds = AmbientDataset(load_dataset(str(path)))
        np.testing.assert_array_equal(ds.sigma_tn_of, sigmas + extra)
        assert f"sigma_tn above sigma_n for {len(sigmas) - 1} " in ds.describe()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["sigma_tn"].append(list(m["sigma_tn"][3])), r"\"sigma_tn\" lists 'img000003\.npy' twice"),
    (lambda m: m["sigma_tn"][3].__setitem__(1, float("nan")), r"sigma_tn of 'img000003\.npy' must be a finite"),
    (lambda m: m["sigma_tn"][3].__setitem__(1, float("inf")), r"sigma_tn of 'img000003\.npy' must be a finite"),
    (lambda m: m["sigma_tn"][3].__setitem__(1, "0.3"), r"sigma_tn of 'img000003\.npy' must be a finite"),
    (lambda m: m["sigma_tn"][3].__setitem__(1, 81), r"sigma_tn of 'img000003\.npy' must be .* <= 80"),
    (lambda m: m["sigma_tn"][3].__setitem__(1, m["sigma_n"][3][1] / 2), r"'img000003\.npy', .* is below its sigma_n"),
    (lambda m: m["sigma_tn"].pop(4), r"no sigma_tn for 1 image.*img000004\.npy"),
    (lambda m: m.pop("sigma_n"), r"a \"sigma_tn\" table but no \"sigma_n\" one"),
])
def test_bad_windows_one_clear_error(tmp_path, edit, message):
    folder, *_ = _random_set(tmp_path)
    _edit_meta(folder, _add_windows(lambda k: 0.1))
    _edit_meta(folder, edit)
    for path in (folder, _zip_folder(folder, tmp_path / "set.zip")):
        with pytest.raises(ValueError, match=message):
            load_dataset(str(path))


@pytest.mark.parametrize("flags, message", [
    (["--sigma-min-per-image", "--sigma-sampling", "truncate"], "--sigma-min-per-image draws the level first"),
    (["--no-sigma-min-per-image", "--window-factor"], "--window-factor weighs the samples of --sigma-min-per-image"),
])
def test_window_flags_that_contradict(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
