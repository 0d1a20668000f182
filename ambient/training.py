"""The training loop: read it top to bottom in `train`.

Every random choice of a step is a pure function of (seed, step, global sample position): the
data order (GlobalOrderSampler), the noise levels and the injected noise. A resumed run, or a run
on a different number of processes, therefore sees exactly the same numbers.
"""
import contextlib
import copy
import dataclasses
import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from kernels import BACKENDS, attention_unavailable, resolve_backend

from . import checkpoint as ckpt
from . import cli, hostcpu
from .atomic import write_json
from .data import DEFAULT_SIGMA_N, AmbientDataset
from .distributed import DistInfo, GlobalOrderSampler, all_reduce_sum, barrier, broadcast_object, init_distributed
from .images import generate, save_grid
from .loading import checkpoint_template
from .loss import AmbientLoss
from .networks import PRESETS, EDMPrecond, build_network
from .sources import load_dataset

SIGMA_BINS = (0.0, 0.1, 0.5, 2.0, float("inf"))   # loss is logged per noise-level range


def option(default: Any, help: str | None, **flag: Any) -> Any:
    """A TrainConfig field and its command-line flag (ambient/train.py builds the parser from these).

    `help` and `flag` go to argparse's add_argument (type, choices, action), except `group`, the section of
    --help that this field opens, and `name`, a flag name other than --field-name (None: no flag at all).
    """
    return dataclasses.field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    """Everything a run depends on; each field is also a flag of `python -m ambient.train` (--field-name unless
    its option() says otherwise), and its help text speaks of the command line. Here n_clean or n_noisy left None
    means "the rest"; the command line alone makes --clean-fraction 0.1 the default when no other way to choose the
    clean images is given."""
    data: str = option("mnist", "mnist (embedded, default), digits, or an EDM data set folder/zip; "
                                "a noisy data set (sigma_n in its dataset.json) is used as stored", group="data")
    n_clean: int | None = option(None, "number of clean images (default: --clean-fraction 0.1; "
                                       "a noisy data set: all of its clean images)", type=cli.nonneg_int)
    n_noisy: int | None = option(None, "number of noisy images (default: the rest)", type=cli.nonneg_int)
    clean_fraction: float | None = option(None, "fraction of the data set that is clean, the rest noisy",
                                          type=cli.fraction)
    sigma_n: tuple[float, ...] | None = option(None, f"noise level(s) of the noisy images, e.g. 0.2 or 0.1,0.4 "
                                                     f"(default {DEFAULT_SIGMA_N})", type=cli.float_list)
    sigma_share: tuple[float, ...] | None = option(None, "share of noisy images at each level, e.g. 0.5,0.5",
                                                   type=cli.float_list)
    p_clean: float | None = option(None, "paper's mode: each image clean with this probability", type=cli.fraction)
    keep_fraction: float = option(1.0, "paper's mode: fraction of the data set used", type=cli.fraction)
    data_seed: int = option(0, "fixes which images are noisy and their noise", type=cli.nonneg_int)
    cond: bool = option(False, "class-conditional training (needs labels)", action="store_true")
    xflip: bool = option(False, "random horizontal flips", action="store_true")
    max_shift: int = option(0, "random circular shifts up to this many pixels", type=cli.nonneg_int)
    workers: int | None = option(None, "DataLoader workers (default 0 on CPU, 4 on CUDA)", type=cli.nonneg_int)

    preset: str = option("tiny", None, choices=tuple(PRESETS), group="network and loss")
    model_channels: int | None = option(None, "override the preset's base width", type=cli.positive_int)
    dropout: float | None = option(None, "override the preset's dropout", type=cli.fraction)
    sigma_sampling: str = option("clamp", None, choices=("clamp", "truncate"))      # clamp: the paper's
    weighting: str = option("edm", None, choices=("edm", "ambient"))
    P_mean: float = option(-1.2, "mean of ln(sigma) in training", type=cli.finite_float)
    P_std: float = option(1.2, "std of ln(sigma) in training", type=cli.positive_float)

    batch: int = option(64, "global batch size", type=cli.positive_int, group="optimisation")  # all ranks, all rounds
    batch_gpu: int | None = option(None, "per-process micro-batch (gradient accumulation)",  # None: batch / world size
                                   type=cli.positive_int)
    lr: float = option(2e-3, None, type=cli.positive_float)
    lr_rampup_kimg: float = option(10.0, None, type=cli.nonneg_float)
    ema_halflife_kimg: float = option(10.0, None, type=cli.nonneg_float)
    ema_rampup_ratio: float | None = option(0.05, "the EMA half-life is at most this ratio times the images seen "
                                                  "so far ('none': no ramp-up)", type=cli.or_none(cli.positive_float))
    # kimg: the default measured 25-29 min on 2 idle cores of an AVX2 EPYC, 19-21 CPU-min on one AMX Xeon thread
    # (docs/default-run/README.md, with the host kinds)
    kimg: float = option(80.0, "training duration in thousands of images", type=cli.positive_float)
    seed: int = option(0, None, type=cli.nonneg_int)
    precision: str = option("auto", "auto: bf16 on CUDA; on a CPU bf16 where it is native and measured faster, "
                                    "else fp32", choices=("auto", "fp32", "bf16"))     # hostcpu.auto_precision
    threads: int | None = option(None, "torch CPU threads (default: OMP_NUM_THREADS, else one per process under "
                                       "torchrun, else all available cores)", type=cli.positive_int)
    tf32: bool = option(True, "disable TF32 matmuls on CUDA", name="--no-tf32", action="store_false")
    kernels: str = option("auto", "auto: Triton on CUDA; xformers: its memory-efficient attention, Triton for "
                                  "the rest", choices=BACKENDS)
    compile: bool = option(False, "torch.compile the network", action="store_true")
    max_bad_steps: int = option(20, "stop after this many consecutive non-finite steps", type=cli.positive_int)

    run_dir: str | None = option(None, "run directory (default: a new numbered one under --outdir)", group="output")
    outdir: str = option("runs", None)
    resume: str | None = option(None, "'auto' (continue --run-dir if it has a checkpoint), a run or a checkpoint "
                                      "directory")
    tick_kimg: float = option(5.0, "log interval", type=cli.positive_float)
    snap_kimg: float = option(20.0, "checkpoint + sample grid interval", type=cli.positive_float)
    keep_ckpts: int = option(3, None, type=cli.positive_int)
    grid_size: int = option(64, "images in the last sample grid", type=cli.positive_int)
    snap_grid_size: int = option(16, "images in the sample grids of earlier snapshots (seeds 0..N-1, as the last "
                                     "grid's first N)", type=cli.positive_int)
    # No flag: the grids are previews at EDM's 18 Heun steps; images to keep or score come from
    # `python -m ambient.sample --steps` and ambient.eval, which set their own.
    sample_steps: int = option(18, "Heun steps of the snapshot sample grids", name=None)
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda if available)")
    progress: bool = option(True, None, name="--no-progress", action="store_false")

    def network_kwargs(self, resolution: int, channels: int, label_dim: int) -> dict[str, Any]:
        kw: dict[str, Any] = dict(preset=self.preset, img_resolution=resolution, img_channels=channels,
                                  label_dim=label_dim if self.cond else 0)
        if self.model_channels is not None:
            kw["model_channels"] = self.model_channels
        if self.dropout is not None:
            kw["dropout"] = self.dropout
        return kw


def make_optimizer(net: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam, fused on CUDA; foreach on a CPU (multi-tensor ops, the same numbers as the per-tensor loop that
    torch picks there by default; CPU fused Adam is faster still but not bit-identical)."""
    cuda = device.type == "cuda"
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=cuda, foreach=not cuda)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) during training: where the run stopped; the run directory stays consistent."""

    def __init__(self, run_dir: Path, step: int, kimg: float):
        last = ckpt.latest_checkpoint(run_dir)
        super().__init__(f"interrupted at step {step} ({kimg:g} kimg) of {run_dir}; "
                         + (f"it continues from {last.name}" if last else "no checkpoint had been written yet"))
        self.run_dir = run_dir


def step_seed(seed: int, step: int) -> int:
    """Seed of everything random in training step `step`."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**31 - 1)


def step_randomness(seed: int, step: int, batch: int, sample_shape: tuple[int, ...], device: torch.device,
                    draw_eps: bool) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """(s, normals, eps): the random numbers of step `step`, for the whole global batch (ranks slice theirs).

        s          = step_seed(seed, step)
        normals[i] ~ N(0, 1), CPU generator seeded s: sample i's noise level (loss.sample_sigma)
        eps[i]     ~ N(0, I), `device` generator seeded s, drawn only with `draw_eps` (the torch kernels);
                     Triton draws it in-kernel from (s, offset i * numel) instead, so eps is None
    Dropout masks come from torch.manual_seed(s + 1 + i) at each micro-batch's first sample i.
    """
    s = step_seed(seed, step)
    normals = torch.randn(batch, generator=torch.Generator().manual_seed(s))
    eps = torch.randn((batch, *sample_shape), generator=torch.Generator(device).manual_seed(s), device=device) \
        if draw_eps else None
    return s, normals, eps


def lr_at(cfg: TrainConfig, nimg: int) -> float:
    """Learning rate after `nimg` training images: lr min(nimg / (1000 lr_rampup_kimg), 1)."""
    return cfg.lr * min(nimg / max(cfg.lr_rampup_kimg * 1000, 1e-8), 1)


def ema_beta(cfg: TrainConfig, nimg: int) -> float:
    """EMA decay of the step that takes the images seen from `nimg` to nimg + batch (EDM's, in images):

        h = 1000 ema_halflife_kimg, ramped up to min(h, (nimg + batch) ema_rampup_ratio) unless the ratio is None
        beta = 0.5^(batch / h)
    """
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup_ratio is not None:
        halflife = min(halflife, (nimg + cfg.batch) * cfg.ema_rampup_ratio)
    return 0.5 ** (cfg.batch / max(halflife, 1e-8))


def grads_finite(net: torch.nn.Module) -> bool:
    """Whether every gradient of `net` is finite (one norm per tensor, one host sync for all)."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """ema <- lerp(net, ema, beta) for the parameters, buffers copied. Per tensor: foreach lerp + copy gave the
    same numbers but measured 0.87x on a CPU (bench/speedups.py)."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)


def resume(path: Path, net: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
           network: dict[str, Any], dataset: str, batch: int, device: torch.device) -> tuple[int, int]:
    """Continue from checkpoint `path`: (step, bad_steps), with its weights and optimizer state loaded.

    Nothing is loaded into the run until the checkpoint is known to continue it: made for the same `network`
    (from meta.json, before its weight files are even read), with an optimizer state (not a converted network),
    on the same `dataset` (description) and global `batch`.
    """
    made_for = ckpt.read_meta(path, verify=False).get("network")    # load_checkpoint verifies it next
    if made_for != network:
        raise ckpt.CheckpointError(f"checkpoint {path} was made for network {made_for}, not {network}")
    state = ckpt.load_checkpoint(path, device, checkpoint_template, resume=True)   # content checked
    if not state["state"]["optimizer"]:
        raise ckpt.CheckpointError(f"checkpoint {path} holds weights only (a converted network?), no "
                                   f"optimizer state to resume training from")
    if state["meta"].get("dataset") != dataset:
        raise ckpt.CheckpointError(f"checkpoint {path} was trained on {state['meta'].get('dataset')!r}, "
                                   f"not {dataset!r}; resume with the same data options")
    if int(state["state"]["batch"]) != batch:
        raise ValueError(f"checkpoint {path} was trained with --batch {state['state']['batch']}; "
                         f"resume with the same global batch (got {batch})")
    net.load_state_dict(state["net"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["state"]["optimizer"])
    return int(state["state"]["step"]), int(state["state"]["bad_steps"])


def tick_record(step: int, batch: int, stats: torch.Tensor, seconds: float, steps: int, *, skipped_steps: int,
                lr: float, device: torch.device) -> dict[str, Any]:
    """The log.jsonl line of a tick: the `steps` steps up to `step`, which took `seconds`.

    `stats` holds the loss sums and sample counts per SIGMA_BINS range (summed over ranks): the mean loss is
    sum / count, overall and per range (0 for an empty range).
    """
    per_bin = (stats[0] / stats[1].clamp(min=1)).tolist()
    return {"step": step, "kimg": step * batch / 1000, "loss": float(stats[0].sum() / stats[1].sum()),
            "loss_by_sigma": {f"{lo:g}-{hi:g}": v for lo, hi, v in zip(SIGMA_BINS, SIGMA_BINS[1:], per_bin)},
            "img_per_s": steps * batch / seconds, "sec_per_step": seconds / steps,
            "peak_mem_mb": peak_memory_mb(device), "skipped_steps": skipped_steps, "lr": lr, "time": time.time()}


def snapshot(run_dir: Path, step: int, net: torch.nn.Module, ema: EDMPrecond, state: dict[str, Any],
             meta: dict[str, Any], *, n_grid: int, sample_steps: int, keep: int) -> None:
    """Write step `step`: the EMA's sample grid of seeds 0..n_grid-1 (class seed mod label_dim), then the
    checkpoint of `net`, `ema`, the training `state` and `meta`. The grid comes first: a resume redoes both."""
    shape = (ema.img_channels, ema.img_resolution, ema.img_resolution)
    labels = (lambda s: torch.tensor(s) % ema.label_dim) if ema.label_dim else None
    grid = torch.cat([img for _, img in generate(ema, range(n_grid), shape, device=next(ema.parameters()).device,
                                                 class_labels=labels, num_steps=sample_steps)])
    path = run_dir / f"samples-{step:09d}.png"
    try:
        save_grid(grid, path)
    except OSError as e:
        raise ckpt.write_error(path, e) from None
    ckpt.save_checkpoint(run_dir, step, net.state_dict(), ema.state_dict(), state, meta, keep=keep)


def make_dataset(cfg: TrainConfig) -> AmbientDataset:
    """The training data of `cfg`: a clean data set corrupted synthetically, or a noisy data set as stored."""
    base = load_dataset(cfg.data)
    if cfg.cond and not base.has_labels:
        raise ValueError(f"--cond needs labels, but data set {cfg.data!r} has none (add a dataset.json)")
    if cfg.clean_fraction is not None and base.sigma_n is not None:
        raise ValueError(f"clean_fraction chooses which images to corrupt, but {cfg.data} is a noisy data set whose "
                         f"images carry their own noise and sigma_n; choose its clean images with n_clean")
    n_clean = round(cfg.clean_fraction * len(base)) if cfg.clean_fraction is not None else cfg.n_clean
    return AmbientDataset(base, n_clean=n_clean, n_noisy=cfg.n_noisy,
                          sigma_n=list(cfg.sigma_n) if cfg.sigma_n is not None else None,
                          sigma_share=list(cfg.sigma_share) if cfg.sigma_share else None, seed=cfg.data_seed,
                          p_clean=cfg.p_clean, keep_fraction=cfg.keep_fraction, xflip=cfg.xflip,
                          max_shift=cfg.max_shift)


class EpochIndexed(torch.utils.data.Dataset):
    """Adapter taking the sampler's (index, epoch) so augmentation is a function of both."""

    def __init__(self, ds: AmbientDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        self.ds.set_epoch(epoch)
        return self.ds[index]


def choose_run_dir(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None for a fresh run); creates the directory.

    A fresh run never goes into a directory that already holds a run.
    """
    resume_from = None
    if cfg.resume not in (None, "auto"):
        resume_from = ckpt.resolve_checkpoint(cfg.resume, checkpoint_template)
        run_dir = Path(cfg.run_dir) if cfg.run_dir else resume_from.parent
    elif cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if cfg.resume == "auto":
            # None: start afresh (an elastic restart before the first snapshot)
            resume_from = ckpt.latest_checkpoint(run_dir, checkpoint_template)
        elif run_dir.is_dir() and any(run_dir.iterdir()):
            raise FileExistsError(f"run directory {run_dir} is not empty; pass --resume {run_dir} to continue "
                                  f"that run, or choose a new --run-dir")
    else:
        if cfg.resume == "auto":
            raise ValueError("--resume auto needs --run-dir (the directory to look for checkpoints in)")
        outdir = Path(cfg.outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        ids = [int(p.name.split("-")[0]) for p in outdir.iterdir() if p.name.split("-")[0].isdigit()]
        data_name = Path(cfg.data).stem if cfg.data not in ("mnist", "digits") else cfg.data
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{data_name}-{cfg.preset}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume_from


def prepare_run_dir(cfg: TrainConfig, dist_info: DistInfo) -> tuple[Path, Path | None]:
    """`choose_run_dir` decided by rank 0 alone (the others would see its new files) and shared with all."""
    decision: tuple = (None, None, None)          # run_dir, resume_from, error
    if dist_info.is_main:
        try:
            decision = (*choose_run_dir(cfg), None)
        except (ValueError, FileExistsError, ckpt.CheckpointError) as e:
            decision = (None, None, e)
    run_dir, resume_from, error = broadcast_object(decision)
    if error is not None:
        raise error
    return run_dir, resume_from


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: TrainConfig) -> Path:
    """Train until cfg.kimg thousand images; returns the run directory."""
    dist_info = init_distributed(cfg.device)
    device = dist_info.device
    # Precision and threads chosen for this host unless given; recorded in config.json and the first line.
    precision, precision_why = (cfg.precision, "given") if cfg.precision not in (None, "auto") else \
        hostcpu.auto_precision(device)
    threads = cfg.threads or hostcpu.default_threads(dist_info.world_size)
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(cfg, precision=precision, threads=threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    batch_rank = cfg.batch // dist_info.world_size
    batch_gpu = min(cfg.batch_gpu or batch_rank, batch_rank)
    if cfg.batch % dist_info.world_size or batch_rank % batch_gpu:
        raise ValueError(f"--batch {cfg.batch} must split evenly into {dist_info.world_size} rank(s) x "
                         f"micro-batches of --batch-gpu {batch_gpu}")
    rounds = batch_rank // batch_gpu

    # Data, network, EMA, optimiser, loss.
    dataset = make_dataset(cfg)
    net_kwargs = cfg.network_kwargs(dataset.resolution, dataset.num_channels, dataset.label_dim)
    torch.manual_seed(cfg.seed)
    net = build_network(**net_kwargs).to(device).train()
    net.set_attn_backend(cfg.kernels)
    if (why := attention_unavailable(cfg.kernels, device)) is not None:    # before the run directory is made
        raise ValueError(f"--kernels {cfg.kernels}: {why}")
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = make_optimizer(net, cfg.lr, device)
    loss_fn = AmbientLoss(P_mean=cfg.P_mean, P_std=cfg.P_std, sigma_sampling=cfg.sigma_sampling,
                          weighting=cfg.weighting, backend=cfg.kernels)

    # Run directory and resume.
    run_dir, resume_from = prepare_run_dir(cfg, dist_info)
    step, bad_total = 0, 0
    if resume_from is not None:
        step, bad_total = resume(resume_from, net, ema, optimizer, network=net_kwargs, dataset=dataset.describe(),
                                 batch=cfg.batch, device=device)
    if dist_info.is_main:
        host = {"host_kind": "cuda" if device.type == "cuda" else hostcpu.this_host_kind(),
                "precision_reason": precision_why}
        write_json({**dataclasses.asdict(cfg), **host}, run_dir / "config.json")
    barrier()

    ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if dist_info.world_size > 1 else net
    model = torch.compile(ddp) if cfg.compile else ddp
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    sampler = GlobalOrderSampler(len(dataset), cfg.batch, dist_info.rank, dist_info.world_size, cfg.data_seed,
                                 start=step * cfg.batch)
    loader = iter(torch.utils.data.DataLoader(EpochIndexed(dataset), batch_size=batch_gpu, sampler=sampler,
                                              num_workers=workers, pin_memory=device.type == "cuda",
                                              persistent_workers=workers > 0))
    eps_from_torch = resolve_backend(cfg.kernels, device) == "torch"
    sample_shape = (dataset.num_channels, dataset.resolution, dataset.resolution)
    numel = math.prod(sample_shape)
    total_steps = math.ceil(cfg.kimg * 1000 / cfg.batch)
    steps_per_tick = max(1, round(cfg.tick_kimg * 1000 / cfg.batch))
    steps_per_snap = max(1, round(cfg.snap_kimg * 1000 / cfg.batch))

    if dist_info.is_main:
        print(f"run {run_dir}: {dataset.describe()}; {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M "
              f"parameters; {dist_info.world_size} process(es) on {device.type}, batch {cfg.batch} = "
              f"{dist_info.world_size} x {rounds} x {batch_gpu}, {precision} ({precision_why}), {threads} thread(s), "
              f"kernels={cfg.kernels}", flush=True)
    bar = None
    if cfg.progress and dist_info.is_main:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)
    log_file = open(run_dir / "log.jsonl", "a") if dist_info.is_main else None
    tick_start, tick_step, bad_run = time.perf_counter(), step, 0
    # Loss sums and counts per sigma bin, kept on the device: no host sync per micro-batch.
    tick_stats = torch.zeros(2, len(SIGMA_BINS) - 1, dtype=torch.float64, device=device)
    bins = torch.tensor(SIGMA_BINS, device=device)

    try:
        while step < total_steps:
            # One optimiser step over the global batch: `rounds` micro-batches on each rank.
            seed, normals, eps_all = step_randomness(cfg.seed, step, cfg.batch, sample_shape, device, eps_from_torch)
            optimizer.zero_grad(set_to_none=True)
            for r in range(rounds):
                items = next(loader)
                first = dist_info.rank * batch_rank + r * batch_gpu        # global position of this micro-batch
                y = items["image"].to(device, non_blocking=True)
                sigma_n = items["sigma_n"].float()
                labels = items["label"].to(device) if cfg.cond else None        # class indices
                torch.manual_seed(seed + 1 + first)                        # dropout masks
                sync = r == rounds - 1 or not isinstance(ddp, DistributedDataParallel)
                with ddp.no_sync() if not sync else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        loss, sigma = loss_fn(model, y, sigma_n, normals[first:first + batch_gpu], labels, seed=seed,
                                              offset=first * numel,
                                              eps=eps_all[first:first + batch_gpu] if eps_all is not None else None)
                    (loss.sum() * (dist_info.world_size / cfg.batch)).backward()   # mean over the global batch
                which = torch.bucketize(sigma.detach(), bins, right=True) - 1
                tick_stats[0].index_add_(0, which, loss.detach().double())
                tick_stats[1].index_add_(0, which, torch.ones_like(which, dtype=torch.float64))

            # Learning-rate ramp-up, non-finite guard, update, EMA.
            for g in optimizer.param_groups:
                g["lr"] = lr_at(cfg, step * cfg.batch)
            if grads_finite(net):
                optimizer.step()
                update_ema(ema, net, ema_beta(cfg, step * cfg.batch))
                bad_run = 0
            else:
                bad_total, bad_run = bad_total + 1, bad_run + 1
                if dist_info.is_main:
                    print(f"step {step}: non-finite loss or gradient, step skipped ({bad_run} in a row)", flush=True)
                if bad_run >= cfg.max_bad_steps:
                    last = ckpt.latest_checkpoint(run_dir)
                    raise TrainingDiverged(f"{bad_run} consecutive steps had non-finite gradients (at step {step}); "
                                           f"stopping. " + (f"The last good checkpoint, {last}, is intact." if last
                                                            else "No checkpoint had been written yet."))
            step += 1
            if bar is not None:
                bar.update(1)

            # Log, snapshot.
            if step % steps_per_tick == 0 or step == total_steps:
                all_reduce_sum(tick_stats)
                rec = tick_record(step, cfg.batch, tick_stats, time.perf_counter() - tick_start, step - tick_step,
                                  skipped_steps=bad_total, lr=optimizer.param_groups[0]["lr"], device=device)
                if log_file is not None:
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_s']:.0f}")
                tick_stats.zero_()
                tick_start, tick_step = time.perf_counter(), step
            if step % steps_per_snap == 0 or step == total_steps:
                if dist_info.is_main:                                          # rank 0 writes; the others wait
                    # The last grid in full, the earlier ones smaller: snapshots are sampling-bound.
                    n_grid = cfg.grid_size if step == total_steps else min(cfg.snap_grid_size, cfg.grid_size)
                    snapshot(run_dir, step, net, ema,
                             {"optimizer": optimizer.state_dict(), "step": step, "bad_steps": bad_total,
                              "batch": cfg.batch},
                             {"network": net_kwargs, "kimg": step * cfg.batch / 1000,
                              "config": dataclasses.asdict(cfg), "dataset": dataset.describe()},
                             n_grid=n_grid, sample_steps=cfg.sample_steps, keep=cfg.keep_ckpts)
                barrier()
    except KeyboardInterrupt:
        raise TrainingInterrupted(run_dir, step, step * cfg.batch / 1000) from None
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return run_dir
