"""The configuration of a run: `TrainConfig`, one field per thing a run depends on, each also a flag of
`python -m ambient.train` (ambient.train.cli builds the parser from the fields' `option` metadata), and
`config_flags`, which writes a configuration back as those flags."""
import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ambient.common import cli
from ambient.common.images import MAX_GRID
from ambient.data import DATA_OPTIONS, DEFAULT_CLEAN_FRACTION, DEFAULT_SIGMA_N
from ambient.model import PRESETS, SIGMA_SAMPLINGS
from ambient.model.networks import attention_where_missing
from kernels import BACKENDS, WEIGHTINGS

# Bounds of the flags whose larger values fail only later, in an allocation or a float32 overflow:
MAX_BATCH = 2**22                   # global batch
MAX_CHANNELS = 1024                 # --model-channels (EDM's largest preset uses 192)
MAX_THREADS = os.cpu_count() or 1   # --threads: at most one per core of this host
# ln(sigma) = P_mean + P_std n with |n| < 10 for torch.randn's draws: |ln(sigma)| <= 10 + 10 * 3 = 40 keeps sigma^2
# a normal float32 number (the ln of its largest is 88.7, of its smallest normal -87.3).
P_MEAN_LIMIT = 10.0
P_STD_LIMIT = 3.0


def option(default: Any, help: str | None, **flag: Any) -> Any:
    """A TrainConfig field and its command-line flag (ambient.train.cli builds the parser from these).

    `help` and `flag` go to argparse's add_argument (type, choices, action), except `group`, the section of
    --help that this field opens, and `name`, a flag name other than --field-name (None: no flag at all).
    """
    return dataclasses.field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    """Everything a run depends on; each field is also a flag of `python -m ambient.train` (--field-name unless
    its option() says otherwise), and its help text speaks of the command line. The data options (the fields
    named in ambient.data.DATA_OPTIONS) go to `ambient.data.make_dataset` as they are, which owns their default
    (DEFAULT_CLEAN_FRACTION clean on a clean data set) and their rules, so `TrainConfig()` and `python train.py`
    are the same run."""
    data: str = option("mnist28", "mnist28 (embedded MNIST-5k at its native 28x28, default), mnist (the same "
                                  "padded to 32x32), digits, or an EDM data set folder/zip; "
                                  "a noisy data set (sigma_n in its dataset.json) is used as stored", group="data")
    n_clean: int | None = option(None, f"number of clean images (default: --clean-fraction {DEFAULT_CLEAN_FRACTION}; "
                                       f"a noisy data set: all of its clean images)", type=cli.nonneg_int)
    n_noisy: int | None = option(None, "number of noisy images (default: the rest)", type=cli.nonneg_int)
    clean_fraction: float | None = option(None, "fraction of the data set that is clean, the rest noisy",
                                          type=cli.fraction)
    sigma_n: tuple[float, ...] | None = option(None, f"noise level(s) of the noisy images, e.g. 0.2 or 0.1,0.4 "
                                                     f"(default {DEFAULT_SIGMA_N})", type=cli.float_list)
    sigma_share: tuple[float, ...] | None = option(None, "share of noisy images at each level, e.g. 0.5,0.5",
                                                   type=cli.float_list)
    all_clean: bool = option(False, "use every image clean (plain EDM training)", action="store_true")
    p_clean: float | None = option(None, "paper's mode: each image clean with this probability", type=cli.fraction)
    keep_fraction: float = option(1.0, "paper's mode: fraction of the data set used", type=cli.fraction)
    data_seed: int = option(0, "fixes which images are noisy and their noise", type=cli.seed)
    cond: bool = option(False, "class-conditional training (needs labels)", action="store_true")
    xflip: bool = option(False, "random horizontal flips", action="store_true")
    max_shift: int = option(0, "random circular shifts up to this many pixels", type=cli.nonneg_int)
    workers: int | None = option(None, "DataLoader workers (default 0 on CPU, 4 on CUDA)", type=cli.nonneg_int)

    preset: str = option("tiny", None, choices=tuple(PRESETS), group="network and loss")
    model_channels: int | None = option(None, "override the preset's base width", type=cli.int_in(1, MAX_CHANNELS))
    dropout: float | None = option(None, "override the preset's dropout", type=cli.fraction)
    attn_resolutions: tuple[int, ...] | None = option(
        None, "override the preset's self-attention resolutions, e.g. 7 or 16,8 ('none': no attention blocks but "
              "the one every SongUNet has at its coarsest level); each must be a level of the network (tiny at "
              "28x28: 28, 14, 7). Default: the preset's where it names a level (tiny's 8 at 32x32 and 16x16), "
              "else the coarsest level (tiny at 28x28: 7, as at 32x32)",
        type=cli.resolution_list)
    sigma_sampling: str = option("clamp", "with --no-sigma-min-per-image: how the level of an image drawn first is "
                                          "drawn (clamp: the paper's)", choices=SIGMA_SAMPLINGS)
    weighting: str = option("edm", None, choices=WEIGHTINGS)
    P_mean: float = option(-0.8, "mean of ln(sigma) in training (EDM's: -1.2)",
                           type=cli.float_in(-P_MEAN_LIMIT, P_MEAN_LIMIT))
    P_std: float = option(1.2, "std of ln(sigma) in training", type=cli.float_in(0, P_STD_LIMIT, open_low=True))
    sigma_min_per_image: bool = option(True, "Ambient-o's per-image noise windows: use each image only at noise "
                                             "levels >= its sigma_tn (dataset.json; default its sigma_n), drawing "
                                             "the level first, then an image admissible there (--no-...: the paper's "
                                             "image first, then its level)", action=argparse.BooleanOptionalAction)
    window_factor: bool = option(False, "with --sigma-min-per-image: weigh each sample's loss by the share of the "
                                        "images admissible at its level, which makes the objective exactly the "
                                        "image-first one", action="store_true")
    consistency: float = option(0.0, "weight of the consistency loss of noisy images below their sigma_n (0: off)",
                                type=cli.nonneg_float, group="consistency loss (below sigma_n)")
    consistency_batch: int = option(4, "samples of each global batch that carry it (evenly spaced; the noisy "
                                       "ones among them)", type=cli.positive_int)
    consistency_steps: int = option(5, "ancestral sampler steps from sigma_n down to the lower level",
                                    type=cli.positive_int)
    consistency_repeats: int = option(6, "sampler runs whose predictions are averaged per sample",
                                      type=cli.positive_int)

    batch: int = option(32, "global batch size (all ranks, all rounds)", type=cli.int_in(1, MAX_BATCH),
                        group="optimisation")
    batch_gpu: int | None = option(None, "per-process micro-batch (gradient accumulation)",  # None: batch / world size
                                   type=cli.positive_int)
    lr: float = option(1e-3, None, type=cli.positive_float)
    lr_rampup_kimg: float = option(10.0, None, type=cli.nonneg_float)
    lr_decay: str = option("cosine", "after the ramp-up: none keeps lr; cosine takes it to 0 at --kimg along "
                                   "(1 + cos(pi nimg / (1000 kimg))) / 2", choices=("none", "cosine"))
    ema_halflife_kimg: float = option(10.0, None, type=cli.nonneg_float)
    ema_rampup_ratio: float | None = option(0.05, "the EMA half-life is at most this ratio times the images seen "
                                                  "so far ('none': no ramp-up)", type=cli.or_none(cli.positive_float))
    kimg: float = option(40.0, "training duration in thousands of images", type=cli.positive_float)
    seed: int = option(0, None, type=cli.seed)
    precision: str = option("auto", "auto: bf16 on CUDA; on a CPU bf16 where it is native and measured faster, "
                                    "else fp32", choices=("auto", "fp32", "bf16"))     # hostcpu.auto_precision
    threads: int | None = option(None, "torch CPU threads (default: OMP_NUM_THREADS, else one per process under "
                                       "torchrun, else all available cores)", type=cli.int_in(1, MAX_THREADS))
    tf32: bool = option(True, "disable TF32 matmuls on CUDA", name="--no-tf32", action="store_false")
    kernels: str = option("auto", "auto: Triton on CUDA; xformers: its memory-efficient attention, Triton for "
                                  "the rest", choices=BACKENDS)
    memory_format: str = option("auto", "layout of weights and activations; auto: channels-last for fp32 on a CPU, "
                                        "else contiguous (measured: bench/README.md)",
                                choices=("auto", "channels_last", "contiguous"))     # hostcpu.auto_memory_format
    compile: bool = option(False, "torch.compile the network", action="store_true")
    max_bad_steps: int = option(20, "stop after this many consecutive non-finite steps", type=cli.positive_int)

    run_dir: str | None = option(None, "run directory (default: a new numbered one under --outdir)", group="output")
    outdir: str = option("runs", None)
    resume: str | None = option(None, "'auto' (continue --run-dir if it has a checkpoint), a run or a checkpoint "
                                      "directory")
    init_from: str | None = option(None, "a new run starts from the weights (net and EMA) of this checkpoint or run "
                                         "directory, with a fresh optimiser (fine-tuning)")
    allow_change: tuple[str, ...] | None = option(None, "on resume, the settings that may differ from the run's own, "
                                                        "e.g. lr,seed (recorded as changes at that step)",
                                                  type=cli.name_list)
    tick_kimg: float = option(5.0, "log interval", type=cli.positive_float)
    snap_kimg: float = option(20.0, "checkpoint + sample grid interval", type=cli.positive_float)
    keep_ckpts: int = option(3, None, type=cli.positive_int)
    grid_size: int = option(64, "images in the last sample grid", type=cli.int_in(1, MAX_GRID))
    snap_grid_size: int = option(16, "images in the sample grids of earlier snapshots (seeds 0..N-1, as the last "
                                     "grid's first N)", type=cli.int_in(1, MAX_GRID))
    # No flag: the grids are previews at EDM's 18 Heun steps; images to keep or score come from
    # `python -m ambient.sample --steps` and ambient.eval, which set their own.
    sample_steps: int = option(18, "Heun steps of the snapshot sample grids", name=None)
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda if available)", type=cli.device)
    progress: bool = option(True, None, name="--no-progress", action="store_false")
    tensorboard: bool = option(True, "write no TensorBoard events (written into the run directory when the "
                                     "tensorboard package is installed)", name="--no-tensorboard",
                               action="store_false")

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self)}
        if unknown := sorted(set(self.allow_change or ()) - fields):
            raise ValueError(f"--allow-change names no setting: {', '.join(unknown)}")
        if self.consistency and self.consistency_batch > self.batch:
            raise ValueError(f"--consistency-batch {self.consistency_batch} is more than --batch {self.batch}")

    def check_window_options(self) -> None:
        """ValueError where the per-image noise window options contradict the others (the parser and train() ask)."""
        if self.sigma_min_per_image and self.sigma_sampling != "clamp":
            raise ValueError(f"--sigma-sampling {self.sigma_sampling} chooses how a level >= sigma_n is drawn for an "
                             f"image drawn first; --sigma-min-per-image draws the level first (from the whole training "
                             f"distribution) and only images admissible there, so it takes no --sigma-sampling; "
                             f"add --no-sigma-min-per-image to draw the image first")
        if self.window_factor and not self.sigma_min_per_image:
            raise ValueError("--window-factor weighs the samples of --sigma-min-per-image, which "
                             "--no-sigma-min-per-image turns off")

    def data_options(self) -> dict[str, Any]:
        """The arguments of ambient.data.make_dataset: the training data of this run."""
        return {name: getattr(self, name) for name in DATA_OPTIONS}

    def network_kwargs(self, resolution: int, channels: int, label_dim: int) -> dict[str, Any]:
        """The build_network arguments for data of this shape."""
        kw: dict[str, Any] = dict(preset=self.preset, img_resolution=resolution, img_channels=channels,
                                  label_dim=label_dim if self.cond else 0)
        if self.model_channels is not None:
            kw["model_channels"] = self.model_channels
        if self.dropout is not None:
            kw["dropout"] = self.dropout
        if self.attn_resolutions is not None:
            kw["attn_resolutions"] = list(self.attn_resolutions)
        elif (coarsest := attention_where_missing(self.preset, resolution)) is not None:
            kw["attn_resolutions"] = coarsest
        return kw


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}     # TrainConfig's fields by name


def flag_name(name: str) -> str | None:
    """The command-line flag of TrainConfig field `name`: --field-name unless its option() says otherwise (None:
    it has none)."""
    return FIELDS[name].metadata.get("name", "--" + name.replace("_", "-"))


def _flag_value(value: Any) -> str:
    """A field value as its flag parses it back exactly: floats by repr, tuples comma-separated (an empty one, which
    only --attn-resolutions takes, as none), None as none."""
    if isinstance(value, (tuple, list)):
        return ",".join(_flag_value(v) for v in value) or "none"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return "none" if value is None else str(value)


def config_flags(values: Mapping[str, Any]) -> list[str]:
    """The flags that set these TrainConfig fields, in declaration order: the inverse of the parser, so
    `parse_args(config_flags(v))` has exactly the values `v` (a switch is written when it differs from its
    default: --cond, --no-progress; a field without a flag only at its default)."""
    unknown = sorted(set(values) - FIELDS.keys())
    if unknown:
        raise ValueError(f"not TrainConfig fields: {', '.join(unknown)}")
    argv: list[str] = []
    for name, f in FIELDS.items():
        if name not in values:
            continue
        flag, value = flag_name(name), values[name]
        if flag is None:
            if value != f.default:
                raise ValueError(f"TrainConfig.{name} has no flag to set it to {value!r}")
            continue
        if f.metadata.get("action") in ("store_true", "store_false"):
            argv += [flag] if value != f.default else []
        elif f.metadata.get("action") is argparse.BooleanOptionalAction:
            argv += [flag if value else "--no-" + flag[2:]] if value != f.default else []
        elif not (value is None and f.default is None):      # None where None is the default: not given
            argv += [flag, _flag_value(value)]
    return argv
