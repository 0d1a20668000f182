"""Train an ambient diffusion model.

    python train.py                                   # tiny UNet on the embedded MNIST-5k, 10% clean + 90% noisy
    python train.py --data DATA.zip --preset ddpmpp --n-clean 5000 --sigma-n 0.2 --batch 512
    python train.py --data noisy.zip                  # a noisy data set: its stored images and sigma_n as they are
    torchrun --nproc_per_node=8 train.py ...          # DDP, one process per GPU
"""
import argparse
import shlex
import sys
from pathlib import Path

import torch

from ambient import cli
from ambient.checkpoint import CheckpointError
from ambient.data import DEFAULT_SIGMA_N, is_noisy_dataset
from ambient.training import TrainConfig, TrainingDiverged, TrainingInterrupted, train


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="mnist (embedded, default), digits, or an EDM data set folder/zip; "
                                                  "a noisy data set (sigma_n in its dataset.json) is used as stored")
    g.add_argument("--n-clean", type=cli.nonneg_int, help="number of clean images (default: --clean-fraction 0.1; "
                                                          "a noisy data set: all of its clean images)")
    g.add_argument("--n-noisy", type=cli.nonneg_int, help="number of noisy images (default: the rest)")
    g.add_argument("--sigma-n", type=cli.float_list, help=f"noise level(s) of the noisy images, e.g. 0.2 or 0.1,0.4 "
                                                           f"(default {DEFAULT_SIGMA_N})")
    g.add_argument("--sigma-share", type=cli.float_list, help="share of noisy images at each level, e.g. 0.5,0.5")
    g.add_argument("--clean-fraction", type=cli.fraction, help="fraction of the data set that is clean, the rest noisy")
    g.add_argument("--p-clean", type=cli.fraction, help="paper's mode: each image clean with this probability")
    g.add_argument("--keep-fraction", type=cli.fraction, default=d.keep_fraction, help="paper's mode: fraction of the data set used")
    g.add_argument("--all-clean", action="store_true", help="use every image clean (plain EDM training)")
    g.add_argument("--data-seed", type=cli.nonneg_int, default=d.data_seed, help="fixes which images are noisy and their noise")
    g.add_argument("--cond", action="store_true", help="class-conditional training (needs labels)")
    g.add_argument("--xflip", action="store_true", help="random horizontal flips")
    g.add_argument("--max-shift", type=cli.nonneg_int, default=d.max_shift, help="random circular shifts up to this many pixels")
    g.add_argument("--workers", type=cli.nonneg_int, help="DataLoader workers (default 0 on CPU, 4 on CUDA)")
    g = p.add_argument_group("network and loss")
    g.add_argument("--preset", choices=("tiny", "ddpmpp", "ncsnpp"), default=d.preset)
    g.add_argument("--model-channels", type=cli.positive_int, help="override the preset's base width")
    g.add_argument("--dropout", type=cli.fraction, help="override the preset's dropout")
    g.add_argument("--sigma-sampling", choices=("clamp", "truncate"), default=d.sigma_sampling)
    g.add_argument("--weighting", choices=("edm", "ambient"), default=d.weighting)
    g.add_argument("--P-mean", type=cli.finite_float, default=d.P_mean, help="mean of ln(sigma) in training")
    g.add_argument("--P-std", type=cli.positive_float, default=d.P_std, help="std of ln(sigma) in training")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch", type=cli.positive_int, default=d.batch, help="global batch size")
    g.add_argument("--batch-gpu", type=cli.positive_int, help="per-process micro-batch (gradient accumulation)")
    g.add_argument("--lr", type=cli.positive_float, default=d.lr)
    g.add_argument("--lr-rampup-kimg", type=cli.nonneg_float, default=d.lr_rampup_kimg)
    g.add_argument("--ema-halflife-kimg", type=cli.nonneg_float, default=d.ema_halflife_kimg)
    g.add_argument("--kimg", type=cli.positive_float, default=d.kimg, help="training duration in thousands of images")
    g.add_argument("--seed", type=cli.nonneg_int, default=d.seed)
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=d.precision,
                   help="auto: bf16 on CUDA; on a CPU bf16 where it is native and measured faster, else fp32")
    g.add_argument("--threads", type=cli.positive_int, help="torch CPU threads (default: OMP_NUM_THREADS, else one "
                                                            "per process under torchrun, else all available cores)")
    g.add_argument("--no-tf32", action="store_true", help="disable TF32 matmuls on CUDA")
    g.add_argument("--kernels", choices=("auto", "triton", "torch", "xformers"), default=d.kernels,
                   help="auto: Triton on CUDA; xformers: its memory-efficient attention, Triton for the rest")
    g.add_argument("--compile", action="store_true", help="torch.compile the network")
    g.add_argument("--max-bad-steps", type=cli.positive_int, default=d.max_bad_steps,
                   help="stop after this many consecutive non-finite steps")
    g = p.add_argument_group("output")
    g.add_argument("--run-dir", help="run directory (default: a new numbered one under --outdir)")
    g.add_argument("--outdir", default=d.outdir)
    g.add_argument("--resume", help="'auto' (continue --run-dir if it has a checkpoint), a run or a checkpoint directory")
    g.add_argument("--tick-kimg", type=cli.positive_float, default=d.tick_kimg, help="log interval")
    g.add_argument("--snap-kimg", type=cli.positive_float, default=d.snap_kimg, help="checkpoint + sample grid interval")
    g.add_argument("--keep-ckpts", type=cli.positive_int, default=d.keep_ckpts)
    g.add_argument("--grid-size", type=cli.positive_int, default=d.grid_size, help="images in the last sample grid")
    g.add_argument("--snap-grid-size", type=cli.positive_int, default=d.snap_grid_size,
                   help="images in the sample grids of earlier snapshots (seeds 0..N-1, as the last grid's first N)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    modes = [m for m, on in (("--n-clean/--n-noisy", a.n_clean is not None or a.n_noisy is not None),
                             ("--clean-fraction", a.clean_fraction is not None), ("--p-clean", a.p_clean is not None),
                             ("--all-clean", a.all_clean)) if on]
    if len(modes) > 1:
        p.error(f"choose one way to say which images are clean, not {' and '.join(modes)}")
    noisy_data = is_noisy_dataset(a.data)
    synthetic = [flag for flag, given in (
        ("--n-noisy", a.n_noisy is not None), ("--sigma-n", a.sigma_n is not None),
        ("--sigma-share", a.sigma_share is not None), ("--clean-fraction", a.clean_fraction is not None),
        ("--p-clean", a.p_clean is not None), ("--keep-fraction", a.keep_fraction != d.keep_fraction),
        ("--all-clean", a.all_clean)) if given]
    if noisy_data and synthetic:
        p.error(f"{', '.join(synthetic)} choose(s) which clean images to corrupt and how, but {a.data} is a noisy "
                f"data set: its images carry their own noise and sigma_n (dataset.json) and are trained on as "
                f"stored; only --n-clean applies (it keeps that many of the set's clean images)")
    # Default: the paper's 10% clean + 90% noisy; a noisy data set has its own split.
    clean_fraction = a.clean_fraction if modes or noisy_data else 0.1
    if a.device is not None:
        try:
            dev = torch.device(a.device)
        except RuntimeError:
            p.error(f"argument --device: {a.device!r} is not a device (cpu, cuda, cuda:1, ...)")
        if dev.type == "cuda" and not torch.cuda.is_available():
            p.error(f"argument --device: {a.device!r} asked for, but no CUDA device is available")
    n_levels = len(a.sigma_n) if a.sigma_n is not None else 1
    if a.sigma_share is not None and len(a.sigma_share) != n_levels:
        p.error(f"--sigma-share has {len(a.sigma_share)} entries but --sigma-n has {n_levels}")
    cfg = TrainConfig(
        data=a.data, n_clean=a.n_clean, n_noisy=0 if a.all_clean else a.n_noisy, clean_fraction=clean_fraction, sigma_n=a.sigma_n, sigma_share=a.sigma_share,
        p_clean=a.p_clean, keep_fraction=a.keep_fraction, data_seed=a.data_seed, cond=a.cond, xflip=a.xflip,
        max_shift=a.max_shift, workers=a.workers, preset=a.preset, model_channels=a.model_channels, dropout=a.dropout,
        sigma_sampling=a.sigma_sampling, weighting=a.weighting, P_mean=a.P_mean, P_std=a.P_std, batch=a.batch,
        batch_gpu=a.batch_gpu, lr=a.lr, lr_rampup_kimg=a.lr_rampup_kimg, ema_halflife_kimg=a.ema_halflife_kimg,
        kimg=a.kimg, seed=a.seed, precision=a.precision, threads=a.threads, tf32=not a.no_tf32, kernels=a.kernels, compile=a.compile,
        max_bad_steps=a.max_bad_steps, run_dir=a.run_dir, outdir=a.outdir, resume=a.resume, tick_kimg=a.tick_kimg,
        snap_kimg=a.snap_kimg, keep_ckpts=a.keep_ckpts, grid_size=a.grid_size, snap_grid_size=a.snap_grid_size, device=a.device,
        progress=not a.no_progress)
    return cfg


def resume_command(argv: list[str], run_dir: str | Path) -> str:
    """The command line that continues run_dir: these arguments with --run-dir RUN --resume auto."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.split("=")[0] in ("--run-dir", "--resume"):
            skip = not skip and "=" not in arg
            continue
        kept.append(arg)
    return shlex.join(["python", "train.py", *kept, "--run-dir", str(run_dir), "--resume", "auto"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    try:
        run_dir = train(cfg)
    except (ValueError, OSError, CheckpointError, TrainingDiverged) as e:   # OSError: e.g. a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"{e}; resume with: {resume_command(argv, e.run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the first training step; run the same command again", file=sys.stderr)
        return 130
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
