"""One training epoch and one validation pass of a preset's models, timed in process (no Ray).

Random tensors at the preset's image size: 44 training slices, the preset's samples per epoch,
236 validation slices (fold 0 of ACDC at 10%). Prints seconds per epoch (AP silent and active) and
per validation pass, for the thread count and memory format given.

    python jobs/bench_epoch.py --preset acdc-cpu --threads 2 --channels-last true
    python jobs/bench_epoch.py --preset acdc-cpu --threads 1 --channels-last false --set train.val_batch_size=128
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="acdc-cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", choices=["true", "false"], default="true")
    ap.add_argument("--set", action="append", default=[], help="config overrides, as for `paal run`")
    args = ap.parse_args()

    from paal_ray.config import load_config
    from paal_ray.models.bundle import ModelSpec
    from paal_ray.training import extensions
    from paal_ray.training.engine import RoundEngine, SliceSet

    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, ["pool=/unused", f"train.channels_last={args.channels_last}", *args.set])
    size = cfg.model.image_size or 128
    engine = RoundEngine(cfg, ModelSpec.from_config(cfg.model, 1, 4), extensions.get(None), torch.device("cpu"), seed=0)
    gen = torch.Generator().manual_seed(0)

    def slices(n: int) -> SliceSet:
        return SliceSet([str(i) for i in range(n)], torch.randn(n, 1, size, size, generator=gen),
                        torch.randint(0, 4, (n, size, size), generator=gen, dtype=torch.uint8))

    train, val = slices(44), slices(236)
    print(f"{args.preset}: {args.threads} thread(s), channels_last {args.channels_last}, "
          f"validation batch {cfg.train.val_batch_size}")
    for epoch in (0, cfg.train.ap_silent_epochs, cfg.train.ap_silent_epochs + 1):
        t = time.perf_counter()
        out = engine.train_epoch(train, epoch)
        print(f"epoch {epoch} (AP {'on' if out['ap_active'] else 'silent'}): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    engine.validate(val)
    print(f"validation of {len(val)} slices: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
