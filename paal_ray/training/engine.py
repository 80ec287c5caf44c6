"""One worker's training machinery, free of Ray: models, optimisers, one epoch, validation.

``RoundEngine`` is what every Ray Train worker runs (``loop.py`` adds data loading, resuming,
checkpoints and the end-of-round decision). Kept apart so that unit tests can run an epoch in
process, and so the GPU benchmark can time the bare step with the very same code.

Data parallelism: every worker holds the whole (small) labelled set. Each epoch draws ONE global
order from (seed, global epoch); a global batch of ``batch_size`` slices is cut into ``world``
equal parts, one per rank (DistributedSampler's scheme). So no labelled slice is ever dropped,
and the slices seen do not depend on how Ray Data dispatched blocks or on the number of workers.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from paal_ray.models.bundle import ModelSpec
from paal_ray.models.dice import confusion_counts, dice_from_counts, dice_targets
from paal_ray.models.losses import per_sample_cross_entropy, segmentation_loss
from paal_ray.training.augment import augment_batch
from paal_ray.training.extensions import TrainingExtension
from paal_ray.training.schedule import lr_at, param_groups


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple (run seed, epoch, rank, purpose): stable across processes."""
    return zlib.crc32(repr(parts).encode()) * 2654435761 % (2**63 - 1)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, none on CPU (bf16 autocast on CPU is slower than fp32 there)."""
    if setting == "none" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    return torch.bfloat16


class SegTrainNet(nn.Module):
    """The segmenter plus the extension's head: one module, so one DDP wrapper syncs both."""

    def __init__(self, segmenter: nn.Module, head: nn.Module | None, extension: TrainingExtension):
        super().__init__()
        self.segmenter = segmenter
        self.head = head
        self.extension = extension

    def forward(self, x: torch.Tensor):
        out = self.segmenter.forward_features(x)
        head_out = self.head(self.extension.head_input(out.stages)) if self.head is not None else None
        return out.logits, head_out


@dataclass
class SliceSet:
    """Decoded slices held by a worker: images [N, C, H, W], labels [N, H, W] uint8 (or None)."""

    ids: list[str]
    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.ids)


def epoch_plan(n: int, global_epoch: int, *, seed: int, batch_size: int, samples_per_epoch: int | None,
               rank: int = 0, world: int = 1) -> torch.Tensor:
    """[steps, per_rank_batch] indices into the training set for this rank and epoch.

    One global order per (seed, epoch), a fresh permutation each time the set is exhausted; each
    global batch is dealt out rank by rank. ``samples_per_epoch=None`` means one pass (rounded up
    to whole global batches)."""
    if n == 0:
        raise ValueError("training set is empty: RoundSpec.train_ids selected no slices")
    per_rank = max(1, math.ceil(batch_size / world))
    global_batch = per_rank * world
    steps = max(1, math.ceil((samples_per_epoch or n) / global_batch))
    gen = torch.Generator().manual_seed(derive_seed(seed, global_epoch, "order"))
    need = steps * global_batch
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])[:need]
    return order.view(steps, global_batch)[:, rank::world]


class RoundEngine:
    def __init__(self, cfg, model_spec: ModelSpec, extension: TrainingExtension, device: torch.device,
                 *, rank: int = 0, world: int = 1, seed: int = 0):
        self.cfg, self.spec, self.extension = cfg, model_spec, extension
        self.device, self.rank, self.world, self.seed = device, rank, world, seed
        self.num_classes = model_spec.num_classes
        self.amp = amp_dtype(cfg.train.mixed_precision, device)
        # channels_last: cuDNN's fast path on GPU; on CPU only when asked (train.channels_last), since
        # it changes a seed's training slightly and the CPU test suite's thresholds were set in NCHW.
        cl = cfg.train.channels_last
        self.channels_last = device.type == "cuda" if cl is None else bool(cl)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        torch.manual_seed(derive_seed(seed, "init"))  # same initial weights on every rank
        seg, ap = model_spec.build()
        head = extension.build_head(seg)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = SegTrainNet(seg, head, extension).to(device, memory_format=fmt)
        self.ap = ap.to(device, memory_format=fmt)
        fused = {"fused": True} if device.type == "cuda" else {}
        tc = cfg.train
        self.opt = torch.optim.AdamW(param_groups(self.net, tc.weight_decay), lr=tc.lr, **fused)
        self.ap_opt = torch.optim.AdamW(param_groups(self.ap, tc.ap_weight_decay), lr=tc.ap_lr, **fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.ap_scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.train_net: nn.Module = self.net
        self.train_ap: nn.Module = self.ap
        # (first epoch, warm-up, length) of an LR schedule of its own (a fixed-length final phase);
        # None: the run's one global schedule.
        self.lr_window: tuple[int, int, int] | None = None
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.train_net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            self.train_ap = nn.parallel.DistributedDataParallel(self.ap, device_ids=ids)

    # -- state --------------------------------------------------------------------------------
    @property
    def segmenter(self) -> nn.Module:
        return self.net.segmenter

    def optimiser_state(self) -> dict:
        return {"segmenter": self.opt.state_dict(), "ap": self.ap_opt.state_dict(),
                "scaler": self.scaler.state_dict(), "ap_scaler": self.ap_scaler.state_dict()}

    def load_optimiser_state(self, state: dict) -> None:
        try:
            self.opt.load_state_dict(state["segmenter"])
        except ValueError as e:
            raise ValueError(f"train_state.pt: optimiser state does not fit this model and extension ({e})") from e
        self.ap_opt.load_state_dict(state["ap"])
        self.scaler.load_state_dict(state["scaler"])
        self.ap_scaler.load_state_dict(state["ap_scaler"])

    def extension_state(self) -> dict:
        st = self.extension.bundle_state(self.net.head)
        return {self.extension.name: st} if st is not None else {}

    def load_models(self, bundle_blob_seg: dict, bundle_blob_ap: dict, extensions: dict) -> None:
        self.net.segmenter.load_state_dict(bundle_blob_seg)
        self.ap.load_state_dict(bundle_blob_ap)
        if self.extension.name in extensions and self.net.head is not None:
            self.extension.load_bundle_state(self.net.head, extensions[self.extension.name])

    # -- data ---------------------------------------------------------------------------------
    def to_device(self, s: SliceSet) -> SliceSet:
        """Training slices live on the device (float16 on a GPU: no loader can starve it)."""
        dt = torch.float16 if self.device.type == "cuda" else torch.float32
        labels = s.labels.to(self.device) if s.labels is not None else None
        return SliceSet(s.ids, s.images.to(self.device, dt), labels)

    @torch.no_grad()
    def predict_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Argmax labels of the current segmenter, eval mode (CEAL's pseudo-labels)."""
        seg = self.net.segmenter
        was = seg.training
        seg.eval()
        out = []
        for i in range(0, images.shape[0], self.cfg.train.val_batch_size):
            x = self._prep(images[i:i + self.cfg.train.val_batch_size])
            with self._autocast():
                out.append(seg(x).argmax(1).to(torch.uint8))
        seg.train(was)
        return torch.cat(out) if out else torch.zeros((0, *images.shape[2:]), dtype=torch.uint8, device=images.device)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def epoch_plan(self, n: int, global_epoch: int) -> torch.Tensor:
        tc = self.cfg.train
        return epoch_plan(n, global_epoch, seed=self.seed, batch_size=tc.batch_size,
                          samples_per_epoch=tc.samples_per_epoch, rank=self.rank, world=self.world)

    def learning_rates(self, epoch: float) -> tuple[float, float]:
        """(segmenter, AP) learning rates at a fractional global epoch."""
        tc = self.cfg.train
        if self.lr_window is None:
            sched = {"warmup_epochs": tc.warmup_epochs, "schedule_epochs": tc.schedule_epochs, "min_lr": tc.min_lr}
            peak = tc.lr
        else:  # the final phase's own schedule
            start, warmup, length = self.lr_window
            epoch -= start
            sched = {"warmup_epochs": warmup, "schedule_epochs": length, "min_lr": tc.min_lr}
            peak = self.cfg.schedule.final_lr or tc.lr
        return lr_at(epoch, peak, **sched), lr_at(epoch, tc.ap_lr, **sched)

    # -- one epoch ----------------------------------------------------------------------------
    def train_epoch(self, data: SliceSet, global_epoch: int) -> dict:
        """Train on ``data`` (already on the device) for one epoch of the global schedule."""
        tc = self.cfg.train
        plan = self.epoch_plan(len(data), global_epoch).to(self.device)
        steps = plan.shape[0]
        aug_gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, global_epoch, self.rank, "aug"))
        torch.manual_seed(derive_seed(self.seed, global_epoch, self.rank, "dropout"))
        ap_active = global_epoch >= tc.ap_silent_epochs and tc.ap_target == "labelled"
        self.train_net.train()
        self.train_ap.train()
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # seg loss, ap loss, ext loss
        start = time.perf_counter()
        for s in range(steps):
            lr, ap_lr = self.learning_rates(global_epoch + s / steps)
            for g in self.opt.param_groups:
                g["lr"] = lr
            for g in self.ap_opt.param_groups:
                g["lr"] = ap_lr
            idx = plan[s]
            x, y = augment_batch(data.images[idx].float(), data.labels[idx].long(), tc.augment, aug_gen)
            x = self._prep(x)
            losses = self.step(x, y, ap_active)
            sums += torch.stack(losses).detach().double()
        sums = (sums / steps).tolist()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - start
        return {"train_loss": sums[0], "ap_loss": sums[1] if ap_active else None,
                "ext_loss": sums[2] if self.net.head is not None else None, "lr": lr, "ap_active": ap_active,
                "train_seconds": secs, "train_slices": steps * plan.shape[1] * self.world,
                "train_slices_per_s": steps * plan.shape[1] * self.world / max(secs, 1e-9),
                "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None}

    def step(self, x: torch.Tensor, y: torch.Tensor, ap_active: bool) -> list[torch.Tensor]:
        """One optimisation step of the segmenter (+ head), then of the AP on detached inputs."""
        k, tc = self.num_classes, self.cfg.train
        with self._autocast():
            logits, head_out = self.train_net(x)
        # Every strategy's segmenter learns from the same loss; an extension's head only adds its
        # own term (LPL ranks each slice's cross-entropy, as the authors' code does).
        loss = segmentation_loss(logits, y, k, label_smoothing=tc.label_smoothing)
        ext_loss = torch.zeros((), device=self.device)
        if head_out is not None:
            per_sample = per_sample_cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
            ext_loss = self.extension.head_loss(head_out, per_sample)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss + ext_loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

        ap_loss = self.ap_step(x, logits, y) if ap_active else torch.zeros((), device=self.device)
        return [loss.detach(), ap_loss.detach(), ext_loss.detach()]

    def ap_step(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One AP step on the segmenter's training-mode output. Decoupled: the AP sees detached
        inputs and has its own optimiser, so no gradient of its loss reaches the segmenter."""
        logits = logits.detach().float()
        target = dice_targets(logits.argmax(1), y, self.num_classes)
        with self._autocast():
            probs = logits.softmax(1)
            if self.channels_last:
                probs = probs.contiguous(memory_format=torch.channels_last)
            pred = self.train_ap(x.detach(), probs)
        ap_loss = F.mse_loss(pred.float(), target)
        self.ap_opt.zero_grad(set_to_none=True)
        self.ap_scaler.scale(ap_loss).backward()
        self.ap_scaler.step(self.ap_opt)
        self.ap_scaler.update()
        return ap_loss.detach()

    def train_ap_on_held_out(self, held_out: SliceSet, global_epoch: int) -> float | None:
        """``train.ap_target=validation`` (a variant beyond the paper): one pass of AP steps over
        slices the segmenter never trains on, from its eval-mode output, so the AP's targets measure
        generalisation error rather than training error. Every rank takes the same number of steps
        (its share cycled), as DDP needs. None while the AP is silent."""
        tc = self.cfg.train
        if global_epoch < tc.ap_silent_epochs:
            return None
        n, bs = len(held_out), tc.batch_size
        steps = torch.tensor(math.ceil(n / bs), device=self.device)
        if self.world > 1:
            dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if int(steps) == 0:
            return None
        if n == 0:
            raise ValueError(f"rank {self.rank}: no validation slices to train the AP on (train.ap_target=validation)")
        gen = torch.Generator().manual_seed(derive_seed(self.seed, global_epoch, self.rank, "ap-held-out"))
        need = int(steps) * bs
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])[:need]
        seg = self.net.segmenter
        seg.eval()
        self.train_ap.train()
        total = 0.0
        for s in range(int(steps)):
            idx = order[s * bs:(s + 1) * bs]
            x = self._prep(held_out.images[idx])
            y = held_out.labels[idx].to(self.device).long()
            with torch.no_grad(), self._autocast():
                logits = seg(x)
            total += float(self.ap_step(x, logits, y))
        seg.train()
        return total / int(steps)

    # -- validation ---------------------------------------------------------------------------
    def sync_buffers(self) -> None:
        """BatchNorm running statistics drift apart per rank; rank 0's are the checkpointed ones."""
        if self.world > 1:
            for m in (self.net, self.ap):
                for b in m.buffers():
                    dist.broadcast(b, 0)

    @torch.no_grad()
    def validate(self, val: SliceSet) -> dict:
        """Dataset-level Dice from global TP/FP/FN (summed over ranks), per-class Dice, AP MAE."""
        self.sync_buffers()
        seg, ap = self.net.segmenter, self.ap
        seg.eval()
        ap.eval()
        k, bs = self.num_classes, self.cfg.train.val_batch_size
        counts = torch.zeros(k, 3, dtype=torch.float64, device=self.device)
        err = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum |ap - dice|, number of values
        for i in range(0, len(val), bs):
            x = self._prep(val.images[i:i + bs])
            y = val.labels[i:i + bs].to(self.device).long()
            with self._autocast():
                logits = seg(x)
            logits = logits.float()
            pred = logits.argmax(1)
            counts += confusion_counts(pred, y, k).to(self.device)
            with self._autocast():
                p_ap = ap(x, logits.softmax(1)).float()
            err[0] += (p_ap - dice_targets(pred, y, k)).abs().sum().double()
            err[1] += p_ap.numel()
        if self.world > 1:
            dist.all_reduce(counts)
            dist.all_reduce(err)
        per_class = dice_from_counts(counts.cpu())
        return {"val_dice": float(per_class[1:].mean()) if k > 1 else float(per_class.mean()),
                "val_dice_per_class": [float(v) for v in per_class],
                "val_ap_mae": float(err[0] / err[1]) if err[1] > 0 else float("nan"),
                "val_slices": int(err[1].item() // k)}
