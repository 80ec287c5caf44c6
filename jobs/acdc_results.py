"""Write docs/results/acdc.md (or acdc-paper-lr.md: --page) from the ACDC comparison's run folders (issue 11).

    python jobs/acdc_results.py docs/results/runs/acdc-comparison-qlr ... --pool POOL --out docs/results

Reads only finished run folders (config.yaml, metrics.jsonl, labelled.json, test.json, the rounds'
ap_health.parquet) and writes PAGE.md, PAGE-curves.png and PAGE-evidence.png into --out. Every
number on the page comes from those folders; the page names the commit and the commands. The
folders can be a workspace's or their copies in docs/results/runs (jobs/archive_runs.py: the same
files less the weights), with ``--pool`` naming the pool on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from archive_runs import run_key  # jobs/, this script's folder, is on sys.path
from final_noise import variant as retrain_variant
from selection_positions import position_tables

from paal_ray.atomic import atomic_write_bytes, atomic_write_text, read_jsonl
from paal_ray.data.pool import Pool
from paal_ray.provenance import source_commit
from paal_ray.runs.state import RunPaths
from paal_ray.sweeps.evidence import paired_differences
from paal_ray.sweeps.evidence_report import RunRef, evidence_markdown, evidence_png
from paal_ray.sweeps.report import collect, curves_png

# The AP-on-validation variant (beyond the paper, issue 11 item 6) is named by its sweep's grid.
APVAL = "paal, ap_target validation"
ORDER = ["full", "paal", APVAL, "paal_ap_only", "random", "max_entropy", "coreset", "badge"]
COMMANDS = """\
```bash
paal ingest ../shared/data/acdc --layout acdc --out pools/acdc128 --size 128
paal sweep jobs/sweeps/acdc-comparison-qlr.yaml --set pool=pools/acdc128     # PAAL, random x folds 0-2; re-run to resume
paal sweep jobs/sweeps/acdc-comparison-qlr-more.yaml --set pool=pools/acdc128  # PAAL, random x folds 3-4
paal sweep jobs/sweeps/acdc-ablation-qlr.yaml --set pool=pools/acdc128       # max-entropy, PAAL (AP only) x folds 0-2
paal sweep jobs/sweeps/acdc-full.yaml --set pool=pools/acdc128               # the full-data reference per fold
paal sweep jobs/sweeps/acdc-variant-apval.yaml --set pool=pools/acdc128      # beyond the paper: PAAL, AP on validation
python jobs/final_noise.py workspace/acdc-comparison-qlr*/* workspace/acdc-ablation-qlr/* workspace/acdc-variant-apval/* \\
    --seeds 0,1,2 --set train.channels_last=true --set train.lr=0.003 --out final-noise.jsonl    # the ranking's final phase
python jobs/archive_runs.py workspace/acdc-comparison-qlr workspace/acdc-comparison-qlr-more workspace/acdc-ablation-qlr \\
    workspace/acdc-variant-apval workspace/acdc-full --out docs/results/runs \\
    --final-noise final-noise.jsonl                                       # the finished runs less weights, committed
python jobs/acdc_results.py docs/results/runs/acdc-comparison-qlr docs/results/runs/acdc-comparison-qlr-more \\
    docs/results/runs/acdc-ablation-qlr docs/results/runs/acdc-variant-apval docs/results/runs/acdc-full \\
    --pool pools/acdc128 --out docs/results --final-noise docs/results/runs/final-noise.jsonl \\
    --headline 'train.channels_last=true train.lr=0.003' --observations docs/results/acdc-observations.md  # acdc.md
```
(`final_noise.py`'s `train.lr=0.003` is the final phase's peak lr for runs made before
`schedule.final_lr`; these runs have `final_lr: 0.003`, which the final phase uses whatever
`train.lr` says, so the same command retrains every set alike. The paper-lr protocol's page,
acdc-paper-lr.md, was made the same way from `acdc-comparison.yaml`, `acdc-comparison-more.yaml`,
`acdc-ablation.yaml` and `acdc-full.yaml` with `--page acdc-paper-lr`; its run folders were lost
with the machine that held them.)"""


PROTOCOL = """\
## Protocol

- **Data.** ACDC, the 80 patients in `../shared/data/acdc` (160 volumes, 1,522 labelled slices; the
  paper used all 100), ingested at 128 x 128 (MR: per-volume percentile clipping to [0, 1]).
- **Test patients.** 20 patients held out before any split (`test.holdout_patients=20`, drawn with
  `test.seed` 0, the same for every run): never trained, validated or selected on. Test Dice is
  dataset-level mean foreground Dice (global TP/FP/FN per class, MONAI), also per volume; HD95 per
  volume in pixels of the 128 grid (the NIfTI files carry no true spacing).
- **Folds and replicates.** The other 60 patients are cut into 5 folds by sorted patient id (12
  each); the held-out fold is the validation set (IQ, the paper's reported Dice). A replicate is a
  fold (seed 0): folds 0-4 for PAAL and random, 0-2 for the other strategies; every strategy of a
  fold starts from the same split and the same seeded initial set (5% of the training slices), so
  differences are paired.
- **Budget.** 10% of the training slices, T = 5 queries of b = floor((10% - 5%) N / 5) slices.
- **Schedules (the paper's).** PAAL and PAAL (AP only) query by IQ (patience 10 epochs, min delta
  1e-3, the 2 warm-up epochs not counted, at most 15 epochs a round); random and max-entropy every
  5 epochs after a 10-epoch warm-up.
- **Final phase (the same for every strategy).** After the last query the segmenter is trained
  from fresh weights for exactly 80 epochs (warm-up 4, cosine to 1e-6) on the final labelled set,
  and its last epoch is the final model: what differs between two runs of a fold is the labelled
  set alone. The runs' own final phases (one training from the fold's seed) are kept in the Table 2
  section for the record; one training proved too noisy to rank the sets (acdc-paper-lr.md: a
  collapse decided a fold). **The ranking uses the final phase retrained** (`jobs/final_noise.py`) from seeds
  0, 1 and 2 at a peak lr of 3e-3 (now the `acdc-cpu` preset's `schedule.final_lr`), the same seeds
  for every strategy of a fold, each run scored by the mean over its seeds. The full-data
  reference (`acdc-full`) ran at the preset, so with that final phase, one training per fold.
  The best validation epoch of the runs' own final phase is also reported (the paper reports the best epoch).
- **Reduced from the paper, and why.** 2 CPU cores instead of a GPU: a plain U-Net of width 8 and
  depth 4 (0.5 M parameters) instead of the ResNet-50 U-Net, 128 px instead of 512, batch 8, an AP
  of width 16 (ResNet-18 layout), epochs of 128 samples (the paper's epoch is one pass over the
  labelled set, one or two batches of 64 at 10% of ACDC, so its IQ patience and query interval span
  about as many samples as here), the final phase from scratch instead of continued (above).
  Measurements behind the final phase: from scratch on the full training data of the 80-patient pool
  (fold 0, 64 patients, peak lr 1e-3), 10,240 samples reached 0.833 validation Dice (RV 0.83, Myo
  0.75, LV 0.92); at the preset's 3e-3 the full-data runs' test Dice is the "full" rows' (issue
  11's bar for this configuration: 0.82). The choice of 3e-3: acdc-paper-lr-observations.md. Everything else is the paper's (losses,
  AdamW and its rates, augmentation, AP, WPS, K, n_init 10).
- **Left out (for now).** Core-set, BADGE and the 20% budget (T = 15) of the paper's Table 2 are not
  run: on 2 CPU cores one AL loop takes 20-40 minutes and each labelled set 3 retrainings of ~8
  minutes, and the compute goes to replicates of the comparison that matters most (PAAL against
  random: 5 folds) and to the ablation (max-entropy, PAAL with the AP only: 3 folds). Both strategies
  exist (`strategy.name=coreset`, `badge`); a sweep over them is the same command with another grid.
"""


# Folds per method. Required (issue 11 item 5): 3 replicates of each method of the paper's Table 2 that
# this page runs, and full data; planned beyond that: folds 3-4 of the pair that matters most (PAAL,
# random) and the AP-on-validation variant (item 6). The status line says which of the two is met.
REQUIRED_FOLDS = {"paal": 3, "random": 3, "paal_ap_only": 3, "max_entropy": 3, "full": 3}
PLANNED_FOLDS = {**REQUIRED_FOLDS, "paal": 5, "random": 5}

QUERY_LR_PROTOCOL = """\
- **This page's change: the query rounds train at a peak lr of 1e-2** (`train.lr=0.01`;
  jobs/sweeps/acdc-comparison-qlr.yaml: PAAL and random, folds 0-2; acdc-comparison-qlr-more.yaml:
  folds 3-4; acdc-ablation-qlr.yaml: max-entropy and PAAL (AP only), folds 0-2), everything else as
  below. At the paper's 1e-3 (acdc-paper-lr.md) this light model, from scratch on the 5% initial set, stays
  on a plateau where it segments the myocardium only, so every strategy selects with a model that
  misses two of three structures and PAAL's accuracy predictor has little to predict (Pearson r <= 0.18 in fold 0). Round 0 of each
  fold trained on its own: fold 0 at 1e-3 and 3e-3 still 0.20-0.21 validation Dice at epoch 30; 3e-3
  finds all three structures by epoch 18 in folds 1-2 only, 1e-2 by epoch 15-18 in all three folds
  (0.46-0.59; acdc-paper-lr-observations.md). A change beyond the paper, made so that selections are made
  by a working model; the final phase (3e-3 from scratch, the same seeds for every strategy) is
  unchanged, so the labelled set is still the only difference between two runs of a fold.
- **Beyond the paper (its own row, `paal, ap_target validation`).** PAAL whose accuracy predictor
  learns from the segmenter's eval-mode predictions on the validation slices, which the segmenter
  never trains on (`train.ap_target=validation`, jobs/sweeps/acdc-variant-apval.yaml): targets that
  measure generalisation error rather than training error. Otherwise this page's PAAL run, fold for
  fold. A variant to learn why PAAL does or does not beat random, not the paper's method.
"""

# Each page: its title, the folds it requires and plans per method, what its protocol adds to PROTOCOL,
# and the peak lr of the runs' own final phases. acdc is issue 11's page; acdc-paper-lr is the first
# protocol's (query rounds at the paper's lr 1e-3), kept as history: its run folders were lost.
PAGES = {
    "acdc": ("ACDC: PAAL against random and uncertainty selection, judged on held-out patients "
             "(query rounds at lr 1e-2)",
             REQUIRED_FOLDS, {**PLANNED_FOLDS, APVAL: 3}, QUERY_LR_PROTOCOL, "3e-3 (schedule.final_lr)"),
    "acdc-paper-lr": ("ACDC: PAAL against random and uncertainty selection, judged on held-out patients",
                      REQUIRED_FOLDS, PLANNED_FOLDS, "", "1e-3"),
}


def _status(refs: list[RunRef], required: dict[str, int] = REQUIRED_FOLDS,
            planned: dict[str, int] = PLANNED_FOLDS) -> list[str]:
    """Says plainly how far the comparison is: every planned fold finished (complete), the required
    ones finished and more running, or fewer finished folds than required for some method (partial)."""
    counts = {s: sum(r.setting == s for r in refs) for s in ORDER if any(r.setting == s for r in refs)}
    have = ", ".join(f"{s} {n}" for s, n in counts.items())
    plan = ", ".join(f"{s} {n}" for s, n in planned.items())
    if all(counts.get(s, 0) >= n for s, n in planned.items()):
        return [f"**Status: complete** (folds per method: {plan}).", ""]
    if all(counts.get(s, 0) >= n for s, n in required.items()):
        more = ", ".join(f"{s} {counts.get(s, 0)} of {n}" for s, n in planned.items() if counts.get(s, 0) < n)
        return [f"**Status: the required comparison is complete** ({', '.join(f'{s} {n}' for s, n in required.items())} "
                f"folds); planned beyond it and not finished yet: {more}. Finished runs per method: {have}.", ""]
    return [f"**Status: partial.** Finished runs per method: {have}; the protocol requires "
            f"{', '.join(f'{s} {n}' for s, n in required.items())} and plans {plan}. The tables below "
            "are what has finished: an ordering is claimed only between methods paired on the same folds, and "
            "none from one fold (a std shown as 0.0 with (1) is a single run).", ""]


def _table2(refs: list[RunRef], finals: dict[Path, dict], tests: dict[Path, dict]) -> list[str]:
    def ms(xs, scale=100):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "-"
        a = scale * np.asarray(xs, float)
        return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0:.1f} ({len(a)})"

    lines = ["| method | labelled | validation Dice, final model | validation Dice, best epoch (the paper's number) "
             "| test Dice, held-out patients | test Dice per volume | test HD95 (px) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    settings = sorted({r.setting for r in refs}, key=lambda s: (ORDER.index(s) if s in ORDER else 99, s))
    for s in settings:
        members = [r for r in refs if r.setting == s]
        f = [finals.get(r.root, {}) for r in members]
        t = [tests.get(r.root, {}) for r in members]
        lab = [x.get("labeled_count") for x in f if x.get("labeled_count")]
        lines.append(f"| {s} | {np.mean(lab):.0f} | " if lab else f"| {s} | - | ")
        lines[-1] += " | ".join([ms([x.get("val_dice") for x in f]), ms([x.get("val_dice_best") for x in f]),
                                 ms([x.get("dice") for x in t]), ms([x.get("volume_dice") for x in t]),
                                 ms([x.get("hd95") for x in t], scale=1)]) + " |"
    return lines


def _load_noise(paths: list[Path]) -> list[dict]:
    recs = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    for r in recs:
        r["variant"] = retrain_variant(r["set"])
    return recs


def _per_run(rows: list[dict]) -> dict[str, dict]:
    """Per run (by its sweep and name, so that a workspace's folders and their archived copies match
    alike): its seeds' validation and test Dice, their means, and how many lost the RV."""
    out = {}
    for run in {run_key(r["run"]) for r in rows}:
        rs = sorted((r for r in rows if run_key(r["run"]) == run), key=lambda r: r["seed"])
        val = np.array([r["val_dice"] for r in rs])
        test = np.array([r.get("test_dice", np.nan) for r in rs])
        out[run] = {"val": val, "test": test, "seeds": tuple(r["seed"] for r in rs),
                    "lost": sum(r["val_per_class"][1] < 0.05 for r in rs)}
    return out


def retrained_seeds(recs: list[dict], refs: list[RunRef], variant: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The seeds of the ranking (the most any finished run's set was retrained from) and the seeds
    that every retrained set of these runs has (what a section over all of them can use while the
    retraining is still going: it runs seed 0 of every set first)."""
    roots = {run_key(r.root) for r in refs}
    per_run = [v["seeds"] for run, v in _per_run([r for r in recs if r["variant"] == variant]).items() if run in roots]
    if not per_run:
        return (), ()
    common = set(per_run[0]).intersection(*per_run[1:])
    return max(per_run, key=len), tuple(sorted(common))


def _headline(recs: list[dict], refs: list[RunRef], variant: tuple[str, ...],
              references: dict[str, tuple[list[float], list[float]]] | None = None,
              seeds: tuple[int, ...] | None = None) -> list[str]:
    """The comparison judged on the final phase retrained from several seeds: per run the mean over
    seeds, then mean ± std over replicates; PAAL minus each baseline per replicate; and the noise
    (spread over seeds of one labelled set) beside the differences. ``seeds``: only these seeds, and
    every run retrained from all of them (default: the most seeds any run has)."""
    rows = [r for r in recs if r["variant"] == variant and (seeds is None or r["seed"] in seeds)]
    per_run = _per_run(rows)
    seeds = seeds if seeds is not None else max((v["seeds"] for v in per_run.values()), key=len, default=())
    runs = {run: v for run, v in per_run.items() if v["seeds"] == seeds}  # every set from the same seeds
    paired = [r for r in refs if run_key(r.root) in runs]
    label = ", ".join(f"`{v}`" for v in variant) or "as the runs"
    if not paired:
        return []
    out = [f"## The comparison: final phase retrained from seed{'s' if len(seeds) > 1 else ''} "
           f"{', '.join(map(str, seeds))} ({label})", "",
           "Every labelled set below (a finished run's final set) trained by `jobs/final_noise.py` with these settings "
           f"from each of the seeds {', '.join(map(str, seeds))} (the same seeds for every strategy of a fold); a run's "
           "number is the mean over its seeds' last epochs, and mean ± std is over replicates (folds). This is the "
           "ranking the page claims; the one-training numbers in the first table are kept for the record. *Seed noise "
           "of one difference*: the standard error that the seeds alone put on one replicate's paired difference "
           "(sqrt(2 s²/k), s² the within-set variance over seeds pooled over both methods' sets, k seeds); a "
           "difference within about twice that is not told apart from training luck. Methods with different numbers "
           "of replicates are compared by the paired rows below (PAAL minus), which use only the folds both have.", "",
           "| method | replicates | validation Dice | test Dice, held-out patients | seed std within a set (val / test, mean) | RV lost |",
           "| --- | --- | --- | --- | --- | --- |"]
    by_setting: dict[str, list[RunRef]] = {}
    for r in paired:
        by_setting.setdefault(r.setting, []).append(r)
    for s in sorted(by_setting, key=lambda s: (ORDER.index(s) if s in ORDER else 99, s)):
        vs = [runs[run_key(r.root)] for r in by_setting[s]]
        val, test = [v["val"].mean() for v in vs], [v["test"].mean() for v in vs]
        sd_v = np.mean([v["val"].std(ddof=1) for v in vs]) if len(seeds) > 1 else np.nan
        sd_t = np.mean([v["test"].std(ddof=1) for v in vs]) if len(seeds) > 1 else np.nan
        out.append(f"| {s} | {len(vs)} | {_msd(val)} | {_msd(test)} | {_num(sd_v)} / {_num(sd_t)} | "
                   f"{sum(v['lost'] for v in vs)} of {len(vs) * len(seeds)} |")
    for s, (val, test) in (references or {}).items():  # not retrained: the run's own final phase, one seed
        out.append(f"| {s} (its own run, seed 0 only) | {len(val)} | {_msd(val)} | {_msd(test)} | - | - |")
    out.append("")
    baselines = [s for s in by_setting if s != "paal"]
    if "paal" in by_setting and baselines:
        out += ["| PAAL minus | test Dice, per replicate | mean ± std | PAAL wins | seed noise of one difference (test) "
                "| validation Dice, per replicate | mean ± std | PAAL wins |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        def paal_minus(b: str, key: str) -> list[str]:  # per replicate, mean ± std, wins
            values = {(r.setting, r.replicate): float(runs[run_key(r.root)][key].mean()) for r in paired}
            values = {k: v for k, v in values.items() if np.isfinite(v)}  # runs without a test set
            diffs = next((p for p in paired_differences(values, b) if p.setting == "paal"), None)
            if diffs is None or not diffs.diffs:
                return ["-", "-", "-"]
            d = list(diffs.diffs.values())
            return [", ".join(f"{rep}: {x:+.4f}" for rep, x in diffs.diffs.items()), _msd(d),
                    f"{sum(x > 0 for x in d)} of {len(d)}"]

        for b in sorted(baselines, key=lambda s: (ORDER.index(s) if s in ORDER else 99, s)):
            noise = _difference_se([runs[run_key(r.root)]["test"] for r in paired if r.setting in ("paal", b)])
            cells = [*paal_minus(b, "test"), _num(noise), *paal_minus(b, "val")]
            out.append(f"| {b} | " + " | ".join(cells) + " |")
        out.append("")
    return [*out, ""]  # the page's next section starts on a line of its own


def _difference_se(seed_values: list[np.ndarray]) -> float:
    """About how far apart two labelled sets' seed means fall by the luck of the seeds alone:
    sqrt(2 s^2 / k), with s^2 the mean within-set variance over seeds and k seeds a set."""
    sets = [a for a in seed_values if len(a) > 1 and np.isfinite(a).all()]
    if not sets:
        return float("nan")
    return float(np.sqrt(2 * np.mean([a.var(ddof=1) for a in sets]) / len(sets[0])))


def _num(x: float) -> str:
    return f"{x:.4f}" if np.isfinite(x) else "-"


def _msd(xs) -> str:
    a = np.asarray(xs, float)
    if not np.isfinite(a).all():
        return "-"
    return f"{a.mean():.4f} ± {a.std(ddof=1):.4f}" if len(a) > 1 else f"{a.mean():.4f}"


def _final_noise(recs: list[dict], refs: list[RunRef]) -> list[str]:
    """The final phase of each run retrained from several seeds (jobs/final_noise.py): how much of a
    run's final Dice is its labelled set and how much one training's luck. One table per variant
    (the settings it changed)."""
    if not recs:
        return []
    setting = {run_key(r.root): (r.setting, r.replicate) for r in refs}
    out = ["## Final phase retrained from several seeds: every variant measured", "",
           "Each finished run's final phase trained again in one process (`python jobs/final_noise.py RUN --seeds ...`): "
           "the run's labelled set, validation and test slices, schedule and model, fresh weights from seed k "
           "(k = 0 with the run's own settings reproduces its final model). Last epoch's Dice. *RV lost*: seeds whose final model "
           "segments no right ventricle on the validation patients (RV Dice < 0.05).", ""]
    for variant in sorted({r["variant"] for r in recs}):
        rows = [r for r in recs if r["variant"] == variant and run_key(r["run"]) in setting]
        if not rows:
            continue
        label = ", ".join(f"`{v}`" for v in variant) or "as the runs"
        out += [f"**Variant: {label}** (epochs: {sorted({r['epochs'] for r in rows})})", "",
                "| run | replicate | seeds | validation Dice | test Dice | RV lost |", "| --- | --- | --- | --- | --- | --- |"]
        per_run = _per_run(rows)
        for run in sorted(per_run, key=lambda x: (setting[x][1], setting[x][0])):
            v = per_run[run]
            val, test = v["val"], v["test"]
            test_cell = (f"{test.mean():.4f}{_sd(test)} ({', '.join(f'{x:.3f}' for x in test)})"
                         if np.isfinite(test).all() else "-")  # runs without a test set
            out.append(f"| {setting[run][0]} | {setting[run][1]} | {', '.join(map(str, v['seeds']))} | "
                       f"{val.mean():.4f}{_sd(val)} ({', '.join(f'{x:.3f}' for x in val)}) | {test_cell} | "
                       f"{v['lost']} of {len(val)} |")
        out.append("")
    return out


def _sd(a: np.ndarray) -> str:
    return f" ± {a.std(ddof=1):.4f}" if len(a) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="sweep folders (or any folders of run folders)")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--page", choices=sorted(PAGES), default="acdc",
                    help="which protocol's page: acdc (query rounds at lr 1e-2, issue 11's page) or acdc-paper-lr (the "
                         "paper's query lr 1e-3, history); names "
                         "the files written (PAGE.md, PAGE-curves.png, PAGE-evidence.png) and the plan of folds")
    ap.add_argument("--final-noise", type=Path, action="append", default=[],
                    help="JSON lines written by jobs/final_noise.py --out (repeatable): a section on the final phase "
                         "retrained from several seeds")
    ap.add_argument("--headline", default=None,
                    help="the --final-noise variant that ranks the strategies, as its --set overrides joined by "
                         "spaces (e.g. 'train.channels_last=true train.lr=0.003'): its own section, mean over seeds")
    ap.add_argument("--pool", type=Path, default=None,
                    help="the runs' pool (default: the path in the first run's config.yaml; archived runs name the "
                         "machine they ran on): its class names and the annotation distribution's reference")
    ap.add_argument("--observations", type=Path, default=None,
                    help="a hand-written Markdown file appended under 'Observations' (what the tables do not say)")
    args = ap.parse_args()
    for p in args.final_noise:  # before anything is written
        if not p.is_file():
            raise SystemExit(f"--final-noise {p}: no such file (jobs/final_noise.py --out writes it)")
    for f in args.folders:
        if not f.is_dir():  # a sweep not started yet: the page says which methods are missing
            print(f"{f}: no such folder (a sweep not started yet?); skipped", file=sys.stderr)
    runs = [r for f in args.folders if f.is_dir() for r in collect(f)]
    if not runs:
        raise SystemExit(f"no run folders in {', '.join(map(str, args.folders))}")
    done = [RunRef(r.root, r.setting, r.replicate) for r in runs if r.done]
    finals, tests = {}, {}
    for r in runs:
        metrics = read_jsonl(RunPaths(r.root).metrics)
        for kind, into in (("final", finals), ("test", tests)):
            recs = [m for m in metrics if m.get("kind") == kind]
            if recs:
                into[r.root] = recs[-1]
    pool = Pool.open(args.pool or yaml.safe_load(RunPaths(runs[0].root).config.read_text())["pool"])
    recorded = [json.loads(RunPaths(r.root).versions.read_text()) for r in runs if RunPaths(r.root).versions.is_file()]
    versions = recorded[0] if recorded else {}
    commits = ", ".join(sorted({str(v.get("commit", "unrecorded"))[:12] for v in recorded})) or "unrecorded"
    args.out.mkdir(parents=True, exist_ok=True)
    title, required, planned, addendum, own_lr = PAGES[args.page]
    atomic_write_bytes(args.out / f"{args.page}-curves.png", curves_png([r for r in runs if r.points and r.done]))
    atomic_write_bytes(args.out / f"{args.page}-evidence.png", evidence_png(done, pool.class_names))
    protocol = PROTOCOL.replace("## Protocol\n\n", "## Protocol\n\n" + addendum) if addendum else PROTOCOL
    header = [
        f"# {title}", "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python jobs/acdc_results.py` at commit `{source_commit()}` "
        f"from {len(runs)} run folders ({len(done)} finished; the runs' own commits: {commits}). Versions: "
        + ", ".join(f"{k} {versions[k]}" for k in ("ray", "torch", "segmentation-models-pytorch", "monai")
                    if k in versions) + ".", "",
        *_status(done, required, planned), protocol, "## Commands", "", COMMANDS, "",
    ]
    table2 = [
        "## Table 2 layout, one final training per run (the runs' own final phases: for the record, not a ranking)", "",
        "Mean ± std over replicates, Dice in %. The strategies' final phases here are the runs' own (peak lr "
        f"{own_lr}, the fold's seed); the ranking is the "
        "comparison retrained from several seeds (its own section).", "",
        *_table2(done, finals, tests), "",
        f"![learning curves]({args.page}-curves.png)", "",
        f"![AP consistency and annotation distribution]({args.page}-evidence.png)", "",
    ]
    reference = "random" if any(r.setting == "random" for r in done) else None
    body = evidence_markdown(done, pool.class_names, reference)
    recs = _load_noise(args.final_noise)
    if args.headline is not None:
        # The full-data reference is not a labelled set to rank: its runs' own final phase (the
        # acdc-cpu preset's, the same settings as the headline's retraining) stands beside the table.
        full = [r for r in done if r.setting == "full" and r.root in finals and r.root in tests]
        refs_rows = {"full": ([finals[r.root]["val_dice"] for r in full], [tests[r.root]["dice"] for r in full])} \
            if full else {}
        variant = retrain_variant(args.headline.split())
        head = _headline(recs, done, variant, refs_rows)
        if not head:
            raise SystemExit(f"--headline {args.headline!r}: no retrained run of that variant in --final-noise")
        header += head
        most, common = retrained_seeds(recs, done, variant)
        if common and common != most:  # some sets are not yet retrained from every seed: all of them on the seeds they share
            every = _headline(recs, done, variant, refs_rows, seeds=common)
            every[2:2] = [f"While the retraining goes on (seed 0 of every set first), this section holds every retrained "
                          f"set on the seed{'s' if len(common) > 1 else ''} all of them have: fewer seeds than the "
                          "section above, so each run's number carries more training luck (the seed noise column "
                          "is blank with one seed: see the section above for its size).", ""]
            header += every
    header += table2
    noise = _final_noise(recs, done)
    # Where the queried slices lie and what the criterion itself would pick (issue 11 item 6).
    groups = {s: [r.root for r in done if r.setting == s] for s in ORDER if s != "full"}
    positions = position_tables({s: rs for s, rs in groups.items() if rs}, pool)
    if positions:
        body += "\n".join(["", "## What each strategy queries, and what its criterion would (`jobs/selection_positions.py`)",
                           "", *positions, ""])
    if noise:
        body += "\n" + "\n".join(noise)
    notes = ["", "## Observations (written by hand, not generated)", "", args.observations.read_text()] \
        if args.observations else []
    path = atomic_write_text(args.out / f"{args.page}.md", "\n".join(header) + body + "\n".join(notes))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
