"""The pure-PyTorch part of scoring: the model bundle on batches of images -> score columns.

``ScoreComputer`` decodes on the device, runs the segmenter and AP under inference mode (bf16
autocast and channels_last on GPU) and is also what the plain-loop benchmark runs, so the two
measure the same work.
"""

from __future__ import annotations

import logging
import threading
import warnings
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from paal_ray.query.scoring.errors import COMPILABLE_KEYS, DETERMINISTIC_KEYS, ScoringError

log = logging.getLogger(__name__)


@dataclass
class ScoreOptions:
    needs: frozenset[str]
    image_size: int | None = None
    mc_passes: int = 10
    seed: int = 0
    # torch.compile the forward pass for batches of this size (smaller ones are padded to it, so
    # it compiles once); None: eager. Compiling costs ~20 s per actor on a GPU (~30 s for a tiny
    # model on 2 CPU cores) and pays off on large pools.
    compile_batch: int | None = None


class ScoreComputer:
    """Runs the model bundle on batches of images and returns the requested score columns."""

    def __init__(self, bundle, options: ScoreOptions, device: str = "cpu"):
        import torch

        self.torch = torch
        self.opts = options
        self.needs = frozenset(options.needs)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.spec = bundle.spec
        self.num_classes = bundle.spec.num_classes
        self.image_size = options.image_size or bundle.spec.image_size
        self._local = threading.local()  # per-thread MC masks / captured head input (GPU actors run 2 calls)
        if self.cuda:
            # Scoring runs thousands of same-shaped batches in a process of its own: let cuDNN pick
            # the fastest kernels once.
            torch.backends.cudnn.benchmark = True
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.seg = bundle.segmenter.to(self.device, memory_format=fmt).eval()
        self.ap = bundle.ap.to(self.device, memory_format=fmt).eval() if "pred_acc" in self.needs else None
        self.lpl = self._load_lpl(bundle) if "lpl_loss" in self.needs else None
        if {"mc_probs", "bald_pixel"} & self.needs:
            self._install_mc_dropout()
        if "grad_embedding" in self.needs:
            self._install_head_capture()
        self._compiled = None
        if options.compile_batch:
            if self.needs & DETERMINISTIC_KEYS <= COMPILABLE_KEYS:
                self._compiled = torch.compile(self._standard_scores, dynamic=False)
                self._compile_lock, self._compiled_once = threading.Lock(), False
            else:
                log.warning("compile_scoring: scores %s are computed eagerly (only %s compile)",
                            sorted(self.needs - COMPILABLE_KEYS), sorted(COMPILABLE_KEYS))

    # ---- extension points wired from the bundle ----
    def _load_lpl(self, bundle):
        from paal_ray.models.loss_prediction import LossPredictionHead

        ext = bundle.extensions.get("lpl")
        if not ext:
            raise ScoringError("strategy needs 'lpl_loss' but the checkpoint has no 'lpl' extension "
                               "(train with the lpl training extension)")
        state = ext.get("state_dict", ext)
        hidden = int(ext.get("hidden", state["fcs.0.weight"].shape[0]))
        head = LossPredictionHead(self.seg.stage_channels, hidden=hidden)
        head.load_state_dict(state)
        return head.to(self.device).eval()

    def _install_mc_dropout(self):
        from torch import nn

        drop = self.seg.feature_dropout
        if not isinstance(drop, nn.Dropout2d) or drop.p <= 0:
            raise ScoringError("mc_dropout needs a segmenter trained with real dropout "
                               "(model.decoder_dropout > 0); this checkpoint has none")
        self.mc_p = float(drop.p)
        drop.train()  # only the dropout module is active; BatchNorm etc. stay in eval mode

        def hook(module, inputs, output):
            mask = getattr(self._local, "mc_mask", None)
            # Per-slice seeded masks replace the module's own draw: passes differ, a seed repeats them.
            # No mask (the deterministic pass: probs, features, ...): dropout off, the input as is.
            # Returning None here would keep the train-mode module's own random draw.
            if mask is None:
                return inputs[0]
            return inputs[0] * mask[:, :, None, None].to(inputs[0].dtype)

        drop.register_forward_hook(hook)

    def _install_head_capture(self):
        from torch import nn

        head = self.seg.net.segmentation_head
        conv = head if isinstance(head, nn.Conv2d) else next(m for m in head.modules() if isinstance(m, nn.Conv2d))

        def pre_hook(module, inputs):
            self._local.head_in = inputs[0]

        conv.register_forward_pre_hook(pre_hook)

    def _mc_masks(self, slice_ids: list[str], channels: int, passes: int):
        """[T, B, C] keep masks scaled by 1/(1-p), seeded by (seed, slice id): independent of batching."""
        masks = np.empty((passes, len(slice_ids), channels), np.float32)
        scale = 1.0 / (1.0 - self.mc_p)
        for j, sid in enumerate(slice_ids):
            rng = np.random.default_rng([self.opts.seed, zlib.crc32(sid.encode())])
            masks[:, j] = (rng.random((passes, channels)) >= self.mc_p) * scale
        return self.torch.from_numpy(masks).to(self.device)

    # ---- one batch ----
    def _prepare(self, images: np.ndarray | list[np.ndarray]):
        """Host arrays (one, or a list of chunks) -> one float32 device tensor, converted and resized
        on the device. On a GPU the chunks are gathered into this thread's pinned staging buffer and
        cross the bus once, asynchronously, in the stored dtype (float16: half the bytes)."""
        torch = self.torch
        import torch.nn.functional as F

        chunks = images if isinstance(images, list) else [images]
        total = sum(len(c) for c in chunks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only Arrow buffers: we never write to them
            sources = [torch.from_numpy(c) for c in chunks]
        if self.cuda:
            stage = self._staging(total, sources[0])
            start = 0
            for src in sources:
                stage[start : start + len(src)].copy_(src)  # releases the GIL: other calls' threads run
                start += len(src)
            x = stage[:total].to(self.device, non_blocking=True)
            self._local.copied.record()  # the next _prepare in this thread waits for it (see _staging)
            x = x.float()
        else:
            x = torch.empty((total, *sources[0].shape[1:]), dtype=torch.float32)
            start = 0
            for src in sources:
                x[start : start + len(src)].copy_(src)
                start += len(src)
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _staging(self, rows: int, like):
        """This thread's pinned host buffer for ``rows`` slices shaped like ``like``, free to write:
        the previous batch's host-to-device copy from it has finished."""
        torch = self.torch
        local = self._local
        stage = getattr(local, "stage", None)
        if stage is not None:
            local.copied.synchronize()
        if stage is None or stage.dtype != like.dtype or stage.shape[1:] != like.shape[1:] or len(stage) < rows:
            stage = local.stage = torch.empty((rows, *like.shape[1:]), dtype=like.dtype, pin_memory=True)
            local.copied = torch.cuda.Event()
        return stage

    def _labels(self, labels: np.ndarray):
        torch = self.torch
        import torch.nn.functional as F

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            y = torch.from_numpy(labels)
        y = y.to(self.device).long()
        if self.image_size and tuple(y.shape[-2:]) != (self.image_size, self.image_size):
            y = F.interpolate(y[:, None].float(), size=(self.image_size,) * 2, mode="nearest")[:, 0].long()
        return y

    def score(self, images: np.ndarray | list[np.ndarray], slice_ids: list[str],
              labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """[B, C, H, W] images as stored (any float dtype, host memory; or a list of such chunks)
        -> score columns as numpy."""
        with self.torch.inference_mode():
            x = self._prepare(images)
            out = self.score_tensor(x, slice_ids, labels)
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def score_tensor(self, x, slice_ids: list[str], labels: np.ndarray | None = None) -> dict[str, Any]:
        """The model work alone, on an already prepared device tensor (the benchmark's model-only
        figure times exactly this). Returns device tensors."""
        torch = self.torch
        needs = self.needs
        out: dict[str, Any] = {}
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        with torch.inference_mode(), amp:
            if needs & DETERMINISTIC_KEYS:
                self._local.mc_mask = None
                if self._compiled is not None:
                    out.update(self._run_compiled(x))
                else:
                    res = self.seg.forward_features(x)
                    probs = torch.softmax(res.logits.float(), dim=1)
                    self._deterministic_scores(x, res, probs, out, labels)
            if {"mc_probs", "bald_pixel"} & needs:
                self._mc_scores(x, slice_ids, out)
        return out

    def _standard_scores(self, x) -> dict[str, Any]:
        """The compilable scores of one batch (what ``_compiled`` wraps)."""
        out: dict[str, Any] = {}
        res = self.seg.forward_features(x)
        self._deterministic_scores(x, res, self.torch.softmax(res.logits.float(), dim=1), out, None)
        return out

    def _run_compiled(self, x) -> dict[str, Any]:
        """The compiled graph on batches of exactly ``compile_batch`` (the last one zero-padded)."""
        torch = self.torch
        size = int(self.opts.compile_batch)
        parts = []
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            n = len(chunk)
            if n < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])
                if self.cuda:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
            if self._compiled_once:
                res = self._compiled(chunk)
            else:
                with self._compile_lock:  # one thread compiles; the actor's other calls wait for it
                    res = self._compiled(chunk)
                    self._compiled_once = True
            parts.append({k: v[:n] for k, v in res.items()})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}

    def _deterministic_scores(self, x, res, probs, out, labels):
        torch = self.torch
        needs = self.needs
        if "probs_mean" in needs:
            out["probs_mean"] = probs.mean(dim=(2, 3))
        if "pixel_entropy" in needs:
            out["pixel_entropy"] = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1).mean(dim=(1, 2))
        if "pixel_least_conf" in needs:
            out["pixel_least_conf"] = (1.0 - probs.amax(1)).mean(dim=(1, 2))
        if "pixel_margin" in needs:
            top2 = probs.topk(2, dim=1).values
            out["pixel_margin"] = (top2[:, 0] - top2[:, 1]).mean(dim=(1, 2))
        if "features" in needs:
            out["features"] = res.pooled
        if "pred_acc" in needs:
            out["pred_acc"] = self.ap(x, probs.to(x.dtype))
        if "lpl_loss" in needs:
            out["lpl_loss"] = self.lpl(res.stages)
        if "grad_embedding" in needs:
            h = self._local.head_in.float()
            onehot = torch.nn.functional.one_hot(probs.argmax(1), self.num_classes).permute(0, 3, 1, 2)
            g = probs - onehot.float()
            emb = torch.einsum("bkhw,bfhw->bkf", g, h) / (g.shape[2] * g.shape[3])
            out["grad_embedding"] = emb.reshape(emb.shape[0], -1)
        if "true_dice" in needs:
            from paal_ray.models.dice import dice_targets

            if labels is None:
                raise ScoringError("true Dice requested but the batch has no labels")
            out["true_dice"] = dice_targets(probs.argmax(1), self._labels(labels), self.num_classes)

    def _mc_scores(self, x, slice_ids, out):
        torch = self.torch
        passes = int(self.opts.mc_passes)
        channels = self.seg.feature_dim
        masks = self._mc_masks(slice_ids, channels, passes)
        mc_probs, p_sum, h_sum = [], None, None
        for t in range(passes):
            self._local.mc_mask = masks[t]
            p = torch.softmax(self.seg.forward_features(x).logits.float(), dim=1)
            mc_probs.append(p.mean(dim=(2, 3)))
            if "bald_pixel" in self.needs:
                h = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
                p_sum = p if p_sum is None else p_sum + p
                h_sum = h if h_sum is None else h_sum + h
        self._local.mc_mask = None
        if "mc_probs" in self.needs:
            out["mc_probs"] = torch.stack(mc_probs, dim=1)
        if "bald_pixel" in self.needs:
            pm = p_sum / passes
            h_mean = -(pm * torch.log(pm.clamp_min(1e-12))).sum(1)
            out["bald_pixel"] = (h_mean - h_sum / passes).mean(dim=(1, 2))

