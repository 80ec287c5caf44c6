"""Scoring the unlabelled pool: one streaming Ray Data pass, an actor pool that loads the model once.

``score_pool`` finds which Parquet row groups hold the requested slices (``Pool.locate``: the
slice_id column only), packs them into work units of at least one scoring batch, and streams the
units (a few hundred bytes each) through ``ScoreActor``s (``ActorPoolStrategy``; one GPU each on GPU
clusters). Each actor reads its units' rows itself (``read_rows``: only the image columns, decoded
once, zero-copy slices) and brings back to the driver only the small per-slice score columns the
strategy asked for (``needs``, see ``strategies.base``): images never travel through the object
store or to the driver, and the pool is never materialised. Why the actor reads: moving 0.5 MB a
slice from read tasks through the object store into the actor capped a GPU actor at ~1,500-1,800
slices/s with no model at all (session 1, H100); reading in the actor moves each image once,
from the Parquet decoder into pinned memory and over the bus (docs/BENCHMARKS.md).

``ScoreComputer`` is the pure-PyTorch part (decode on the device, segmenter + AP under inference
mode, bf16 autocast and channels_last on GPU) and is also what the plain-loop benchmark runs, so
the two measure the same work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
import zlib
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from paal_ray.data.pool import IMAGE_COLUMNS, LABEL_COLUMNS, RowGroupRows, read_rows

log = logging.getLogger(__name__)

# Scores that come from the deterministic (eval-mode) forward pass.
_DETERMINISTIC_KEYS = {"probs_mean", "pixel_entropy", "pixel_least_conf", "pixel_margin", "features",
                       "pred_acc", "lpl_loss", "grad_embedding", "true_dice"}
# The ones torch.compile can take as one graph (no hooks, labels or extension heads): PAAL's and
# the uncertainty and clustering baselines'.
_COMPILABLE_KEYS = {"probs_mean", "pixel_entropy", "pixel_least_conf", "pixel_margin", "features", "pred_acc"}


class ScoringError(RuntimeError):
    """The pool, the checkpoint or the requested scores do not fit together."""


# -- Arrow batch -> arrays (zero copy where the layout allows) -------------------------------------
def _binary_chunk_view(chunk, what: str, sid_hint: str) -> tuple[np.ndarray, np.ndarray]:
    """The data bytes of a (large_)binary Arrow chunk and its offsets, without copying."""
    import pyarrow as pa

    if chunk.null_count:
        raise ScoringError(f"{what}: {chunk.null_count} null values in a batch starting at slice {sid_hint}")
    bufs = chunk.buffers()
    off_dtype = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[chunk.offset : chunk.offset + len(chunk) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return data, offsets


def fixed_arrays(table, column: str, dtype_col: str, shape_col: str, as_chunks: bool = False):
    """[B, *shape] array of a binary tensor column: zero-copy views on the Arrow buffers (all
    slices of a batch must share dtype and shape). A batch that spans several Arrow chunks is
    concatenated, or with ``as_chunks`` returned as a list of views so the caller can copy each
    straight to the device."""
    import pyarrow.compute as pc

    n = table.num_rows
    sid0 = table.column("slice_id")[0].as_py() if n else "?"
    dtypes = pc.unique(table.column(dtype_col)).to_pylist()
    if len(dtypes) != 1 or dtypes[0] is None:
        raise ScoringError(f"column {column}: expected one dtype per batch, got {dtypes} (batch at slice {sid0})")
    dtype = np.dtype(dtypes[0])
    shape_col_arr = table.column(shape_col).combine_chunks()
    flat = np.asarray(shape_col_arr.flatten().to_numpy(zero_copy_only=False))
    ndim = len(shape_col_arr[0].as_py())
    shapes = flat.reshape(n, ndim)
    if (shapes != shapes[0]).any():
        raise ScoringError(f"column {column}: slices of different shapes in one batch (at slice {sid0}); "
                           "set model.image_size and re-ingest, or score them separately")
    shape = tuple(int(s) for s in shapes[0])
    nbytes = int(np.prod(shape)) * dtype.itemsize
    parts = []
    for chunk in table.column(column).chunks:
        data, offsets = _binary_chunk_view(chunk, column, sid0)
        if not (np.diff(offsets) == nbytes).all():
            raise ScoringError(f"column {column}: byte lengths do not match shape {shape} x {dtype} (batch at slice {sid0})")
        parts.append(data[offsets[0] : offsets[-1]].view(dtype).reshape((len(chunk), *shape)))
    if not parts:
        parts = [np.zeros((0, *shape), dtype)]
    if as_chunks:
        return parts
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# -- the model part ----------------------------------------------------------------------------------
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
            if self.needs & _DETERMINISTIC_KEYS <= _COMPILABLE_KEYS:
                self._compiled = torch.compile(self._standard_scores, dynamic=False)
                self._compile_lock, self._compiled_once = threading.Lock(), False
            else:
                log.warning("compile_scoring: scores %s are computed eagerly (only %s compile)",
                            sorted(self.needs - _COMPILABLE_KEYS), sorted(_COMPILABLE_KEYS))

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
            return None if mask is None else inputs[0] * mask[:, :, None, None].to(inputs[0].dtype)

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
            if needs & _DETERMINISTIC_KEYS:
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


# -- the Ray Data actor ------------------------------------------------------------------------------
class ScoreActor:
    """Callable class for ``map_batches``: loads the bundle once; each call gets work units (JSON
    lists of ``RowGroupRows``), reads their rows and scores them in batches of ``batch_size``."""

    def __init__(self, checkpoint: str, options: ScoreOptions, use_gpu: bool = False, threads: int | None = None,
                 batch_size: int = 256):
        import torch

        from paal_ray.models.bundle import load_model_bundle

        self.threads = int(threads) if threads else None
        self.batch_size = int(batch_size)
        device = "cuda" if use_gpu else "cpu"
        if use_gpu and not torch.cuda.is_available():
            raise ScoringError("scaling.use_gpu is set but this scoring actor sees no GPU")
        self.computer = ScoreComputer(load_model_bundle(checkpoint), options, device=device)
        self.with_labels = "true_dice" in options.needs
        self.columns = IMAGE_COLUMNS + (LABEL_COLUMNS if self.with_labels else [])
        self._local = threading.local()

    def __call__(self, batch) -> dict[str, np.ndarray]:
        import torch

        if self.threads and getattr(self._local, "threads", None) != self.threads:
            # Ray runs actor methods in a thread other than the constructor's, and OpenMP's thread
            # count is per calling thread: set in __init__ only, the convolutions (oneDNN) ran on
            # Ray's OMP_NUM_THREADS=1 and scoring was ~20% slower on 2 cores.
            torch.set_num_threads(self.threads)
            self._local.threads = self.threads
        parts = [RowGroupRows.from_json(p) for unit in batch["unit"] for p in json.loads(str(unit))]
        table = read_rows(parts, self.columns)
        if self.computer.cuda:
            stream = getattr(self._local, "stream", None)
            if stream is None:
                stream = self._local.stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):  # a thread's own stream: copies overlap the other calls' compute
                return self._score_table(table)
        return self._score_table(table)

    def _score_table(self, table) -> dict[str, np.ndarray]:
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, table.num_rows, self.batch_size):
            results.append(self.score_arrow(table.slice(start, self.batch_size)))
        if not results:
            return {"slice_id": np.zeros(0, dtype=object)}
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def score_arrow(self, batch) -> dict[str, np.ndarray]:
        """One Arrow batch of image (and label) columns -> its score columns and slice ids."""
        ids = batch.column("slice_id").to_pylist()
        images = fixed_arrays(batch, "image", "image_dtype", "image_shape", as_chunks=True)
        labels = fixed_arrays(batch, "label", "label_dtype", "label_shape") if self.with_labels else None
        scores = self.computer.score(images, ids, labels)
        scores["slice_id"] = np.asarray(ids, dtype=object)
        return scores


# -- the driver side ---------------------------------------------------------------------------------
@dataclass
class ScoreTable:
    slice_ids: list[str]  # in the order the caller asked for
    scores: dict[str, np.ndarray]  # each [N, ...], row i belongs to slice_ids[i]
    # wall_s: the whole pass; first_batch_s: until the first scores arrived (actor start, model
    # load, first read); stream_rate: slices/s over the pass's last 90% (the pipeline's steady
    # state: past the start-up and the units that were in flight together when it ended).
    stats: dict[str, float] = field(default_factory=dict)


def work_units(parts: list[RowGroupRows], min_rows: int) -> list[str]:
    """Consecutive row groups packed into units of at least ``min_rows`` slices (a scoring batch):
    pools with small row groups (one volume each) still give the GPU full batches."""
    units, current, rows = [], [], 0
    for part in parts:
        current.append(part.to_json())
        rows += len(part.rows)
        if rows >= min_rows:
            units.append(json.dumps(current))
            current, rows = [], 0
    if current:
        units.append(json.dumps(current))
    return units


def score_pool(pool_path: str, slice_ids: Iterable[str], checkpoint: str, options: ScoreOptions, *,
               scaling, log_every: float = 0.1) -> ScoreTable:
    """Score the given slices of a pool in one streaming pass; rows come back in the given order."""
    import ray

    from paal_ray.data.pool import Pool

    ids = list(slice_ids)
    pos = {s: i for i, s in enumerate(ids)}
    if len(pos) != len(ids):
        raise ScoringError("score_pool: duplicate slice ids requested")
    pool = Pool.open(pool_path)
    if not ids:
        return ScoreTable(slice_ids=[], scores={}, stats={"wall_s": 0.0, "first_batch_s": 0.0, "stream_rate": 0.0})
    batch_size = int(scaling.score_batch_size)
    units = work_units(pool.locate(ids), batch_size)
    use_gpu = bool(scaling.use_gpu)
    if scaling.compile_scoring:
        options = replace(options, compile_batch=batch_size)
    ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=max(1, len(units)))
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "options": options, "use_gpu": use_gpu,
                               "threads": None if use_gpu else scaling.score_threads, "batch_size": batch_size},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=int(scaling.score_actors),
            # GPU: several units per actor at once, in threads, each on its own CUDA stream, so
            # that reading and copying some overlaps the model's work on another.
            max_concurrent_calls_per_actor=int(scaling.score_calls_per_gpu_actor) if use_gpu else None,
            enable_true_multi_threading=True if use_gpu else None,
        ),
        num_gpus=float(scaling.gpus_per_score_actor) if use_gpu else 0,
        num_cpus=1,
    )
    n = len(ids)
    t0 = time.perf_counter()
    t_first, t_tenth, tenth_rows = None, None, 0
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    done, next_log = 0, log_every
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None, prefetch_batches=2):
        rows = np.fromiter((pos[s] for s in batch["slice_id"]), dtype=np.int64, count=len(batch["slice_id"]))
        for key, val in batch.items():
            if key == "slice_id":
                continue
            if key not in out:
                out[key] = np.empty((n, *val.shape[1:]), dtype=np.float32)
            out[key][rows] = val
        if seen[rows].any():
            raise ScoringError("score_pool: a slice was scored twice (duplicate slice ids in the pool?)")
        seen[rows] = True
        done += len(rows)
        if t_first is None:
            t_first = time.perf_counter()
        if t_tenth is None and done >= 0.1 * n:
            t_tenth, tenth_rows = time.perf_counter(), done
        if n and done / n >= next_log:
            log.info("scored %d / %d slices", done, n)
            next_log += log_every
    if not seen.all():  # locate() checked every id; this would be a lost unit
        missing = [ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise ScoringError(f"{pool.path}: {int((~seen).sum())} requested slices were not scored, e.g. {missing}")
    t_end = time.perf_counter()
    stats = {"wall_s": t_end - t0, "first_batch_s": (t_first or t_end) - t0,
             "stream_rate": (done - tenth_rows) / (t_end - t_tenth) if t_tenth and t_end > t_tenth else 0.0}
    return ScoreTable(slice_ids=ids, scores=out, stats=stats)
