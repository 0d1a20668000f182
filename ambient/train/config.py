"""The configuration of a run: `TrainConfig`, one field per thing a run depends on, each also a flag of
`python -m ambient.train` (ambient.train.cli builds the parser from the fields' `option` metadata), and
`config_flags`, which writes a configuration back as those flags."""
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ambient.common import cli
from ambient.data import DATA_OPTIONS, DEFAULT_CLEAN_FRACTION, DEFAULT_SIGMA_N
from ambient.model import PRESETS, SIGMA_SAMPLINGS
from kernels import BACKENDS, WEIGHTINGS


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
    data: str = option("mnist", "mnist (embedded, default), digits, or an EDM data set folder/zip; "
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
    data_seed: int = option(0, "fixes which images are noisy and their noise", type=cli.nonneg_int)
    cond: bool = option(False, "class-conditional training (needs labels)", action="store_true")
    xflip: bool = option(False, "random horizontal flips", action="store_true")
    max_shift: int = option(0, "random circular shifts up to this many pixels", type=cli.nonneg_int)
    workers: int | None = option(None, "DataLoader workers (default 0 on CPU, 4 on CUDA)", type=cli.nonneg_int)

    preset: str = option("tiny", None, choices=tuple(PRESETS), group="network and loss")
    model_channels: int | None = option(None, "override the preset's base width", type=cli.positive_int)
    dropout: float | None = option(None, "override the preset's dropout", type=cli.fraction)
    sigma_sampling: str = option("clamp", None, choices=SIGMA_SAMPLINGS)      # clamp: the paper's
    weighting: str = option("edm", None, choices=WEIGHTINGS)
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
    allow_change: tuple[str, ...] | None = option(None, "on resume, the settings that may differ from the run's own, "
                                                        "e.g. lr,seed (recorded as changes at that step)",
                                                  type=cli.name_list)
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
    tensorboard: bool = option(True, "write no TensorBoard events (written into the run directory when the "
                                     "tensorboard package is installed)", name="--no-tensorboard",
                               action="store_false")

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self)}
        if unknown := sorted(set(self.allow_change or ()) - fields):
            raise ValueError(f"--allow-change names no setting: {', '.join(unknown)}")

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
        return kw


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}     # TrainConfig's fields by name


def flag_name(name: str) -> str | None:
    """The command-line flag of TrainConfig field `name`: --field-name unless its option() says otherwise (None:
    it has none)."""
    return FIELDS[name].metadata.get("name", "--" + name.replace("_", "-"))


def _flag_value(value: Any) -> str:
    """A field value as its flag parses it back exactly: floats by repr, tuples comma-separated, None as none."""
    if isinstance(value, (tuple, list)):
        return ",".join(_flag_value(v) for v in value)
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
        elif not (value is None and f.default is None):      # None where None is the default: not given
            argv += [flag, _flag_value(value)]
    return argv
