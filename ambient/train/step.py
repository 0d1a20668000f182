"""One training step: `train_step(state, batch, step)`, the only place the step is written. The training loop,
bench/bench_train.py and bench/profile_train.py all call it; a new loss term goes here once.

Every random number of step `step` is a pure function of (seed, step, global sample position)
(`ambient.data.streams`): the noise levels, the injected noise and the dropout masks, so a resumed run, or a run on
another number of processes, sees exactly the same numbers.
"""
import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ambient.data.streams import consistency_rng, dropout_seed, step_seed
from ambient.model import AmbientLoss, EDMPrecond, build_network, consistency_loss, sample_sigma_below
from kernels import attention_unavailable, resolve_backend

from .config import TrainConfig
from .hostcpu import auto_memory_format

Timer = Callable[[str], AbstractContextManager]     # timer(phase) -> a context that times that phase


def untimed(phase: str) -> AbstractContextManager:
    """The default timer: times nothing."""
    return contextlib.nullcontext()


def make_optimizer(net: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) on CUDA and on a CPU alike; bench/README.md has its speed
    beside the per-tensor loop and foreach forms (its rounding differs from theirs in the last bit)."""
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


class NoiseStream:
    """eps[i] ~ N(0, I), the injected noise of sample i of a step's global batch of `batch` samples of shape
    `sample_shape`: the numbers of torch.randn((batch, *sample_shape), generator=torch.Generator(device).manual_seed(s))
    sliced, asked for one micro-batch at a time, in order (`take(first, count)`).

    On a CPU (and a sample size a multiple of 16) only the micro-batch asked for is held, so memory follows
    --batch-gpu: randn of n float32 values (n >= 16, a multiple of 16) draws n uniforms, one generator word each,
    then maps each block of 16 of them to normals (Box-Muller), so values i .. i + m (i, m multiples of 16) are
    randn(m) drawn after i uniforms. Elsewhere (CUDA's Philox lays the values out by the kernel launch) the batch is
    drawn at once.
    """

    DISCARD_CHUNK = 1 << 20     # uniforms drawn at a time to skip the samples of the ranks before this one

    def __init__(self, s: int, batch: int, sample_shape: tuple[int, ...], device: torch.device) -> None:
        self.shape, self.numel = tuple(sample_shape), math.prod(sample_shape)
        self.generator = torch.Generator(device).manual_seed(s)
        self.whole = None
        if device.type != "cpu" or self.numel % 16:
            self.whole = torch.randn((batch, *self.shape), generator=self.generator, device=device)
        self.position = 0       # samples drawn so far

    def take(self, first: int, count: int) -> torch.Tensor:
        """eps of samples first .. first + count - 1 (first at or after the end of the last micro-batch taken)."""
        if first < self.position:
            raise ValueError(f"noise of sample {first} asked for after that of sample {self.position - 1}")
        if self.whole is not None:
            self.position = first + count
            return self.whole[first:first + count]
        skip = (first - self.position) * self.numel
        while skip > 0:
            torch.rand(min(skip, self.DISCARD_CHUNK), generator=self.generator)
            skip -= min(skip, self.DISCARD_CHUNK)
        self.position = first + count
        return torch.randn((count, *self.shape), generator=self.generator)


def step_randomness(seed: int, step: int, batch: int, sample_shape: tuple[int, ...], device: torch.device,
                    draw_eps: bool) -> tuple[int, torch.Tensor, NoiseStream | None]:
    """(s, normals, eps): the random numbers of step `step`, for the whole global batch (ranks slice theirs).

        s          = step_seed(seed, step)
        normals[i] ~ N(0, 1), CPU generator seeded s: sample i's noise level (loss.sample_sigma)
        eps[i]     ~ N(0, I), `device` generator seeded s (NoiseStream: per micro-batch), drawn only with `draw_eps`
                     (the torch kernels); Triton draws it in-kernel from (s, offset i * numel) instead: eps is None
    Dropout masks come from torch.manual_seed(dropout_seed(s, i)) at each micro-batch's first sample i.
    """
    s = step_seed(seed, step)
    normals = torch.randn(batch, generator=torch.Generator().manual_seed(s))
    return s, normals, NoiseStream(s, batch, sample_shape, device) if draw_eps else None


def lr_at(cfg: TrainConfig, nimg: int) -> float:
    """Learning rate after `nimg` training images:

        lr_t = lr min(nimg / (1000 lr_rampup_kimg), 1) d(nimg)
        d    = 1                                                (--lr-decay none)
        d    = (1 + cos(pi min(nimg / (1000 kimg), 1))) / 2     (--lr-decay cosine: 0 at the run's end)
    """
    ramp = min(nimg / max(cfg.lr_rampup_kimg * 1000, 1e-8), 1)
    decay = 1.0
    if cfg.lr_decay == "cosine":
        decay = (1 + math.cos(math.pi * min(nimg / (cfg.kimg * 1000), 1))) / 2
    return cfg.lr * ramp * decay


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
    """ema <- lerp(net, ema, beta) for the parameters, buffers copied; per tensor (a foreach form gives the same
    numbers and was measured slower on a CPU: bench/README.md)."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)


@dataclass
class TrainState:
    """What a training step reads and updates: the network, its EMA, the optimiser and the loss, and where this
    process's samples sit in a step's global batch."""

    cfg: TrainConfig                    # precision, memory format and threads resolved (no "auto")
    net: EDMPrecond                     # the trained weights: gradients checked, EMA source, checkpointed
    ema: EDMPrecond
    optimizer: torch.optim.Optimizer
    loss_fn: AmbientLoss
    device: torch.device
    sample_shape: tuple[int, int, int]  # (C, H, W) of a training image
    model: Callable[..., torch.Tensor] | None = None   # what the forward pass calls: net, its DDP / compiled form
    ddp: DistributedDataParallel | None = None
    first_position: int = 0             # global position of this process's first sample in a step's batch
    world_size: int = 1

    def __post_init__(self) -> None:
        self.model = self.model or self.net
        # Triton draws the injected noise in-kernel; the torch kernels take it from step_randomness.
        self.eps_from_torch = resolve_backend(self.cfg.kernels, self.device) == "torch"

    def distribute(self, rank: int, world_size: int) -> None:
        """Wrap the network for `world_size` processes (DDP) and with torch.compile when cfg.compile; call after
        the weights are loaded (DDP starts every rank from rank 0's)."""
        self.world_size = world_size
        self.first_position = rank * (self.cfg.batch // world_size)
        if world_size > 1:
            self.ddp = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
        wrapped = self.ddp or self.net
        self.model = torch.compile(wrapped) if self.cfg.compile else wrapped


def build_state(cfg: TrainConfig, network: dict[str, Any], device: torch.device,
                sample_shape: tuple[int, int, int]) -> TrainState:
    """The network `build_network(**network)` (initialised from cfg.seed), its EMA, Adam and the loss of `cfg`, on
    `device`; ValueError when cfg.kernels cannot run there."""
    if cfg.memory_format == "auto":        # the one place it is resolved (train() records state.cfg's)
        cfg = dataclasses.replace(cfg, memory_format=auto_memory_format(device, cfg.precision))
    torch.manual_seed(cfg.seed)
    layout = torch.channels_last if cfg.memory_format == "channels_last" else torch.contiguous_format
    net = build_network(**network).to(device, memory_format=layout).train()
    net.set_attn_backend(cfg.kernels)
    if (why := attention_unavailable(cfg.kernels, device)) is not None:
        raise ValueError(f"--kernels {cfg.kernels}: {why}")
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    loss_fn = AmbientLoss(P_mean=cfg.P_mean, P_std=cfg.P_std, sigma_sampling=cfg.sigma_sampling,
                          weighting=cfg.weighting, backend=cfg.kernels)
    return TrainState(cfg, net, ema, make_optimizer(net, cfg.lr), loss_fn, device, sample_shape)


@dataclass
class StepStats:
    """What one step did, for logging: this process's per-sample losses and noise levels, whether the gradients
    were finite (else the update was skipped), and the learning rate and EMA decay it used."""

    loss: torch.Tensor      # (samples of this process,) detached, on the device
    sigma: torch.Tensor     # (samples of this process,) the noise levels s the losses were taken at
    finite: bool
    lr: float
    ema_beta: float
    consistency: torch.Tensor | None = None   # (consistency samples of this process,) their consistency losses


def consistency_positions(batch: int, count: int) -> frozenset[int]:
    """Global positions in a step's batch of the samples that carry the consistency loss: floor(j batch / count),
    j < count, evenly spaced, so every rank and micro-batch gets its share."""
    return frozenset(j * batch // count for j in range(count))


def consistency_term(state: TrainState, y: torch.Tensor, sigma_n: torch.Tensor, labels: torch.Tensor | None,
                     first: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices in this micro-batch, their consistency losses): the noisy samples of the micro-batch whose global
    position (first + index) is a consistency position. Sample i's draws come from consistency_rng(seed, step,
    position): one standard normal for its level s < sigma_n (loss.sample_sigma_below), then the sampler noise
    (R, K, C, H, W). The network is state.net itself, inside the step's graph (not the DDP wrapper: one DDP
    forward per backward), so its gradients join the step's reduction."""
    cfg = state.cfg
    chosen = consistency_positions(cfg.batch, cfg.consistency_batch)
    idx = [i for i in range(len(y)) if first + i in chosen and sigma_n[i] > 0]
    if not idx:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, device=y.device)
    normals, noise = [], []
    for i in idx:
        rng = consistency_rng(cfg.seed, step, first + i)
        normals.append(rng.standard_normal())
        noise.append(torch.from_numpy(rng.standard_normal((cfg.consistency_repeats, cfg.consistency_steps,
                                                           *state.sample_shape))))
    index = torch.tensor(idx)
    sigma_n = sigma_n[index].float()
    s = sample_sigma_below(sigma_n, torch.tensor(normals), P_mean=cfg.P_mean, P_std=cfg.P_std)
    on_device = index.to(y.device)
    loss = consistency_loss(state.net, y[on_device], sigma_n.to(y.device), s.to(y.device),
                            torch.stack(noise).to(y.device, torch.float32),
                            labels[on_device] if labels is not None else None)
    return index, loss


def _micro_batches(state: TrainState, batch: Sequence[dict[str, Any]]) -> Iterator[tuple[int, bool, dict]]:
    """(global position of the first sample, whether gradients are reduced after it, items) per micro-batch."""
    first = state.first_position
    for r, items in enumerate(batch):
        yield first, r == len(batch) - 1, items
        first += len(items["image"])


def train_step(state: TrainState, batch: Sequence[dict[str, Any]], step: int, timer: Timer = untimed) -> StepStats:
    """Step `step` on this process's share of the global batch, `batch` (its micro-batches, each a dict of
    "image" (B, C, H, W), "sigma_n" (B,) and "label" (B,) as AmbientDataset's items collate, and "sigma" (B,) where
    the sigma-first sampler drew the noise levels with the images: those are used, `normals` are not; "weight" (B,)
    where it gives a loss factor: the backward pass takes weight x loss, the logged losses are unweighted):

        noise levels s >= sigma_n, x_t = y + sqrt(s^2 - sigma_n^2) eps, D(x_t; s), the ambient loss
        (ambient.model.loss), plus cfg.consistency times the consistency loss of the consistency samples
        (consistency_term) when it is on, backward of its mean over the global batch (gradients summed over
        micro-batches, reduced over processes after the last), then unless a gradient is non-finite: Adam at
        lr_at(step), EMA at ema_beta(step).
    `timer(phase)` times "forward", "backward", "nonfinite_check", "optimiser" and "ema".
    """
    cfg = state.cfg
    nimg = step * cfg.batch
    numel = state.sample_shape[0] * state.sample_shape[1] * state.sample_shape[2]
    seed, normals, eps = step_randomness(cfg.seed, step, cfg.batch, state.sample_shape, state.device,
                                         state.eps_from_torch)
    state.optimizer.zero_grad(set_to_none=True)
    losses, sigmas, consistencies = [], [], []
    for first, last, items in _micro_batches(state, batch):
        y = items["image"].to(state.device, non_blocking=True)
        if cfg.memory_format == "channels_last":
            y = y.contiguous(memory_format=torch.channels_last)
        part = slice(first, first + len(y))
        labels = items["label"].to(state.device) if cfg.cond else None        # class indices
        torch.manual_seed(dropout_seed(seed, first))
        sync = last or state.ddp is None
        with state.ddp.no_sync() if not sync else contextlib.nullcontext():
            with timer("forward"), torch.autocast(state.device.type, dtype=torch.bfloat16,
                                                  enabled=cfg.precision == "bf16"):
                loss, sigma = state.loss_fn(state.model, y, items["sigma_n"].float(), normals[part], labels,
                                            seed=seed, offset=first * numel,
                                            eps=eps.take(first, len(y)) if eps is not None else None,
                                            sigma=items.get("sigma"))
                total = loss * items["weight"].to(loss) if "weight" in items else loss     # --window-factor
                if cfg.consistency > 0:                     # off: not a single extra draw or operation
                    index, consistency = consistency_term(state, y, items["sigma_n"], labels, first, step)
                    total = total.index_add(0, index.to(loss.device), cfg.consistency * consistency)
                    consistencies.append(consistency.detach())
            with timer("backward"):
                (total.sum() * (state.world_size / cfg.batch)).backward()   # mean over the global batch
        losses.append(loss.detach())
        sigmas.append(sigma.detach())

    lr, beta = lr_at(cfg, nimg), ema_beta(cfg, nimg)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    with timer("nonfinite_check"):
        finite = grads_finite(state.net)
    if finite:
        with timer("optimiser"):
            state.optimizer.step()
        with timer("ema"):
            update_ema(state.ema, state.net, beta)
    return StepStats(torch.cat(losses), torch.cat(sigmas), finite, lr, beta,
                     torch.cat(consistencies) if consistencies else None)
