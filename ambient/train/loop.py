"""The training loop: read it top to bottom in `train`. One step is `ambient.train.step.train_step`; around it
the loop reads the data, logs, writes snapshots (a sample grid and a checkpoint), resumes and stops.
"""
import dataclasses
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch

from ambient.common.atomic import write_json
from ambient.common.images import save_grid
from ambient.data import AmbientDataset, make_dataset
from ambient.data.order import EpochIndexed, GlobalOrderSampler
from ambient.io import checkpoint as ckpt
from ambient.model import EDMPrecond, generate, seed_classes

from . import events, hostcpu
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .rundir import cut_log, prepare_run_dir, resume_changes
from .step import Timer, TrainState, build_state, train_step, untimed
from .windows import SigmaFirstSampler

SIGMA_BINS = (0.0, 0.1, 0.5, 2.0, float("inf"))   # loss is logged per noise-level range


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) during training: where the run stopped; the run directory stays consistent."""

    def __init__(self, run_dir: Path, step: int, kimg: float):
        last = ckpt.latest_checkpoint(run_dir)
        super().__init__(f"interrupted at step {step} ({kimg:g} kimg) of {run_dir}; "
                         + (f"it continues from {last.name}" if last else "no checkpoint had been written yet"))
        self.run_dir = run_dir


def resume(path: Path, state: TrainState, cfg: TrainConfig, *, network: dict[str, Any],
           dataset: str) -> tuple[int, int, list[dict[str, Any]]]:
    """Continue from checkpoint `path`: (step, bad_steps, the run's changes), with its weights and optimizer state
    loaded into `state`.

    Nothing is loaded into the run until the checkpoint is known to continue it: made for the same `network`
    (from meta.json, before its weight files are even read), with an optimizer state (not a converted network),
    on the same `dataset` (description) and global batch, with what defines the run unchanged unless allowed
    (rundir.resume_changes).
    """
    batch, device = cfg.batch, state.device
    made_for = ckpt.read_meta(path, verify=False).get("network")    # load_checkpoint verifies it next
    if made_for != network:
        raise ckpt.CheckpointError(f"checkpoint {path} was made for network {made_for}, not {network}")
    saved = ckpt.load_checkpoint(path, device, check_network=True, resume=True)   # content checked
    if not saved["state"]["optimizer"]:
        raise ckpt.CheckpointError(f"checkpoint {path} holds weights only (a converted network?), no "
                                   f"optimizer state to resume training from")
    if saved["meta"].get("dataset") != dataset:
        raise ckpt.CheckpointError(f"checkpoint {path} was trained on {saved['meta'].get('dataset')!r}, "
                                   f"not {dataset!r}; resume with the same data options")
    if int(saved["state"]["batch"]) != batch:
        raise ValueError(f"checkpoint {path} was trained with --batch {saved['state']['batch']}; "
                         f"resume with the same global batch (got {batch})")
    step = int(saved["state"]["step"])
    changes = resume_changes(cfg, saved["meta"], step)
    state.net.load_state_dict(saved["net"])
    state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["state"]["optimizer"])
    return step, int(saved["state"]["bad_steps"]), changes


def init_weights(path: str, state: TrainState, *, network: dict[str, Any]) -> Path:
    """Load the net and EMA weights of checkpoint (or run) `path` into `state`, made for `network` (the optimiser
    stays fresh); returns the checkpoint. A fine-tuning run starts here; a resumed one loads its own weights after."""
    found = ckpt.resolve_checkpoint(path, check_network=True)
    made_for = ckpt.read_meta(found, verify=False).get("network")
    if made_for != network:
        raise ckpt.CheckpointError(f"--init-from {path}: made for network {made_for}, not {network}")
    saved = ckpt.load_checkpoint(found, state.device, check_network=True)
    state.net.load_state_dict(saved["net"])
    state.ema.load_state_dict(saved["ema"])
    return found


def draw_counts(sigma: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
    """(draws, draws of a noisy image, wasted draws) of a step's noise levels `sigma` and its images' `sigma_n`: a
    draw is wasted where a noisy image meets s <= sigma_n ("clamp" puts s = sigma_n there), where its ambient loss and
    its gradient are exactly zero (docs/design.md, "Ambient loss")."""
    noisy = sigma_n > 0
    return torch.stack([torch.tensor(len(sigma), device=sigma.device), noisy.sum(), (noisy & (sigma <= sigma_n)).sum()])


def log_losses(tick_stats: torch.Tensor, bins: torch.Tensor, loss: torch.Tensor, sigma: torch.Tensor) -> None:
    """Add per-sample losses to the (sums, counts) per SIGMA_BINS range; a sample whose loss or noise level is not
    a finite number (sigma overflowed, or is 0 or negative) is left out, as a non-finite step's are."""
    kept = torch.isfinite(loss) & torch.isfinite(sigma) & (sigma >= 0)     # masked, not indexed: no host sync
    which = (torch.bucketize(sigma, bins, right=True) - 1).clamp(0, len(bins) - 2)
    tick_stats[0].index_add_(0, which, torch.where(kept, loss.double(), 0.0))
    tick_stats[1].index_add_(0, which, kept.double())


def tick_record(step: int, batch: int, stats: torch.Tensor, draws: torch.Tensor, seconds: float, steps: int, *,
                skipped_steps: int, lr: float, ema_beta: float, device: torch.device) -> dict[str, Any]:
    """The log.jsonl line of a tick: the `steps` steps up to `step`, which took `seconds` (`lr` and `ema_beta`:
    its last step's).

    `stats` holds the loss sums and sample counts per SIGMA_BINS range (summed over ranks): the mean loss is
    sum / count, overall and per range (0 for an empty range). `draws` sums draw_counts over the tick's steps (skipped
    ones too: their compute was spent): the wasted share of all draws and of the noisy images' draws.
    """
    per_bin = (stats[0] / stats[1].clamp(min=1)).tolist()
    counted = float(stats[1].sum())                   # 0 when every step of the tick was skipped: no loss
    total, noisy, wasted = draws.tolist()
    return {"step": step, "kimg": step * batch / 1000, "loss": float(stats[0].sum()) / counted if counted else None,
            "loss_by_sigma": {f"{lo:g}-{hi:g}": v for lo, hi, v in zip(SIGMA_BINS, SIGMA_BINS[1:], per_bin)},
            "wasted_draws": wasted / total, "wasted_draws_of_noisy": wasted / noisy if noisy else None,
            "img_per_s": steps * batch / seconds, "sec_per_step": seconds / steps,
            "peak_mem_mb": peak_memory_mb(device), "skipped_steps": skipped_steps, "lr": lr, "ema_beta": ema_beta,
            "time": time.time()}


def snapshot(run_dir: Path, step: int, net: torch.nn.Module, ema: EDMPrecond, state: dict[str, Any],
             meta: dict[str, Any], *, n_grid: int, sample_steps: int, keep: int, timer: Timer = untimed,
             event_log: events.EventLog | None = None) -> None:
    """Write step `step`: the checkpoint of `net`, `ema`, the training `state` and `meta` ("checkpoint"), then the
    EMA's sample grid of seeds 0..n_grid-1 ("sample_grid"; also to `event_log`). The checkpoint comes first, so the
    slow sampling never delays or loses it (a grid lost to a crash is not redone on resume)."""
    with timer("checkpoint"):
        ckpt.save_checkpoint(run_dir, step, net.state_dict(), ema.state_dict(), state, meta, keep=keep)
    shape = (ema.img_channels, ema.img_resolution, ema.img_resolution)
    path = run_dir / f"samples-{step:09d}.png"
    with timer("sample_grid"):
        grid = torch.cat([img for _, img in generate(ema, range(n_grid), shape, device=next(ema.parameters()).device,
                                                     class_labels=seed_classes(ema.label_dim),
                                                     num_steps=sample_steps)])
        try:
            image = save_grid(grid, path)
        except OSError as e:
            raise ckpt.write_error(path, e) from None
        if event_log is not None:
            event_log.grid(step, image)


def data_loader(dataset: AmbientDataset, cfg: TrainConfig, dist_info: DistInfo, batch_gpu: int,
                start: int) -> Any:
    """This process's micro-batches of `batch_gpu` items, forever, from global image position `start` on: in the data
    order, or with cfg.sigma_min_per_image each with the noise level it was drawn for ("sigma")."""
    device = dist_info.device
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    if cfg.sigma_min_per_image:     # the noise level first, then an image admissible there: ambient.train.windows
        sampler = SigmaFirstSampler(dataset.sigma_tn_of, cfg.batch, dist_info.rank, dist_info.world_size, cfg.seed,
                                    P_mean=cfg.P_mean, P_std=cfg.P_std, factor=cfg.window_factor, start=start)
    else:
        sampler = GlobalOrderSampler(len(dataset), cfg.batch, dist_info.rank, dist_info.world_size, cfg.data_seed,
                                     start=start)
    return iter(torch.utils.data.DataLoader(EpochIndexed(dataset), batch_size=batch_gpu, sampler=sampler,
                                            num_workers=workers, pin_memory=device.type == "cuda",
                                            persistent_workers=workers > 0))


def snapshot_due(step: int, total_steps: int, steps_per_snap: int) -> bool:
    """Whether step `step` writes a snapshot: every `steps_per_snap` steps and at the end, but a snapshot falling
    less than half an interval before the end is left to the end's (not two snapshots a few steps apart), so the
    last interval is 0.5 to 1.5 intervals long:

        step == total_steps  or  (step % steps_per_snap == 0  and  total_steps - step >= steps_per_snap / 2)

    A function of the step alone: a resumed run writes the snapshots an uninterrupted one writes."""
    return step == total_steps or (step % steps_per_snap == 0 and total_steps - step >= steps_per_snap / 2)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: TrainConfig, timer: Timer = untimed) -> Path:
    """Train until cfg.kimg thousand images; returns the run directory. `timer(phase)` times the phases of the
    run ("data", the step's phases, "sample_grid", "checkpoint"), as bench/profile_train.py does."""
    cfg.check_window_options()
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

    # Data, then the network, EMA, optimiser and loss (checked before the run directory is made).
    dataset = make_dataset(**cfg.data_options())
    net_kwargs = cfg.network_kwargs(dataset.resolution, dataset.num_channels, dataset.label_dim)
    sample_shape = (dataset.num_channels, dataset.resolution, dataset.resolution)
    state = build_state(cfg, net_kwargs, device, sample_shape)
    cfg = state.cfg                                 # with --memory-format resolved, as config.json records it
    if cfg.init_from is not None:                   # checked before the run directory is made
        init_weights(cfg.init_from, state, network=net_kwargs)

    # Run directory (held for the run's life: released in the finally below) and resume.
    run_dir, resume_from, held = prepare_run_dir(cfg, dist_info)
    bar = log_file = event_log = None
    try:
        step, bad_total, changes = 0, 0, []
        if resume_from is not None:
            step, bad_total, changes = resume(resume_from, state, cfg, network=net_kwargs,
                                              dataset=dataset.describe())
        if dist_info.is_main:
            cut_log(run_dir, step)
            events.cut_events(run_dir, step)
            host = {"host_kind": "cuda" if device.type == "cuda" else hostcpu.this_host_kind(),
                    "precision_reason": precision_why, "dataset": dataset.describe()}
            write_json({**dataclasses.asdict(cfg), **host, "changes": changes}, run_dir / "config.json")
        barrier()
        state.distribute(dist_info.rank, dist_info.world_size)
        loader = data_loader(dataset, cfg, dist_info, batch_gpu, start=step * cfg.batch)
        total_steps = math.ceil(cfg.kimg * 1000 / cfg.batch)
        steps_per_tick = max(1, round(cfg.tick_kimg * 1000 / cfg.batch))
        steps_per_snap = max(1, round(cfg.snap_kimg * 1000 / cfg.batch))

        if cfg.tensorboard and dist_info.is_main and events.available():
            event_log = events.EventLog(run_dir)
        if dist_info.is_main:
            params = sum(p.numel() for p in state.net.parameters())
            print(f"run {run_dir}: {dataset.describe()}; {params / 1e6:.2f}M parameters; {dist_info.world_size} "
                  f"process(es) on {device.type}, batch {cfg.batch} = "
                  f"{dist_info.world_size} x {rounds} x {batch_gpu}, {precision} ({precision_why}), "
                  f"{threads} thread(s), kernels={cfg.kernels}", flush=True)
        if cfg.progress and dist_info.is_main:
            from tqdm import tqdm
            bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)
        log_file = open(run_dir / "log.jsonl", "a") if dist_info.is_main else None
        tick_start, tick_step, bad_run, first_step = time.perf_counter(), step, 0, step
        # Loss sums and counts per sigma bin, kept on the device: no host sync per step.
        tick_stats = torch.zeros(2, len(SIGMA_BINS) - 1, dtype=torch.float64, device=device)
        tick_draws = torch.zeros(3, dtype=torch.float64, device=device)     # draw_counts summed over the tick
        consistency_stats = torch.zeros(2, dtype=torch.float64, device=device)    # its sum and count, when on
        bins = torch.tensor(SIGMA_BINS, device=device)

        while step < total_steps:
            with timer("data"):
                batch = [next(loader) for _ in range(rounds)]
            stats = train_step(state, batch, step, timer)
            tick_draws += draw_counts(stats.sigma, torch.cat([items["sigma_n"] for items in batch]).to(device).float())
            if stats.finite:                           # a skipped step's losses (and noise levels) are not logged
                log_losses(tick_stats, bins, stats.loss, stats.sigma)
                if stats.consistency is not None:
                    consistency_stats[0] += stats.consistency.double().sum()
                    consistency_stats[1] += len(stats.consistency)
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
            if step + 1 == total_steps and bad_run == total_steps - first_step:       # before the last snapshot
                raise TrainingDiverged(f"every one of the {bad_run} steps of this run had non-finite gradients: "
                                       f"nothing was trained (look at the data's pixel scale and noise levels)")
            step += 1
            if bar is not None:
                bar.update(1)

            # Log, snapshot.
            if step % steps_per_tick == 0 or step == total_steps:
                all_reduce_sum(tick_stats)
                all_reduce_sum(tick_draws)
                rec = tick_record(step, cfg.batch, tick_stats, tick_draws, time.perf_counter() - tick_start,
                                  step - tick_step, skipped_steps=bad_total, lr=stats.lr, ema_beta=stats.ema_beta,
                                  device=device)
                if cfg.consistency > 0:             # the mean consistency loss of the tick's consistency samples
                    all_reduce_sum(consistency_stats)
                    count = float(consistency_stats[1])
                    rec["consistency"] = float(consistency_stats[0]) / count if count else None
                    consistency_stats.zero_()
                if log_file is not None:
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                if event_log is not None:
                    event_log.tick(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_s']:.0f}")
                tick_stats.zero_()
                tick_draws.zero_()
                tick_start, tick_step = time.perf_counter(), step
            if snapshot_due(step, total_steps, steps_per_snap):
                if dist_info.is_main:                                          # rank 0 writes; the others wait
                    # The last grid in full, the earlier ones smaller: snapshots are sampling-bound.
                    n_grid = cfg.grid_size if step == total_steps else min(cfg.snap_grid_size, cfg.grid_size)
                    snapshot(run_dir, step, state.net, state.ema,
                             {"optimizer": state.optimizer.state_dict(), "step": step, "bad_steps": bad_total,
                              "batch": cfg.batch},
                             {"network": net_kwargs, "kimg": step * cfg.batch / 1000,
                              "config": dataclasses.asdict(cfg), "dataset": dataset.describe(), "changes": changes},
                             n_grid=n_grid, sample_steps=cfg.sample_steps, keep=cfg.keep_ckpts, timer=timer,
                             event_log=event_log)
                barrier()
    except KeyboardInterrupt:
        raise TrainingInterrupted(run_dir, step, step * cfg.batch / 1000) from None
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
        if event_log is not None:
            event_log.close()
        if held is not None:
            held.close()
    return run_dir
