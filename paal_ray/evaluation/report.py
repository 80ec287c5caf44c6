"""The evaluation table `paal evaluate` prints, and the one-line summaries of runs and status."""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"


def _pm(stat: dict[str, Any], digits: int) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{_f(stat['mean'], digits)} ± {_f(stat.get('std'), digits)} ({stat.get('n', 0)})"


def one_line(result: dict[str, Any]) -> str:
    """'Dice 0.8123 (per volume 0.8010 ± 0.0420), HD95 3.21 ± 1.10 on 4 patients, 8 volumes, 96 slices'."""
    vd, hd = result.get("volume_dice") or {}, result.get("hd95") or {}
    return (f"Dice {_f(result.get('dice'))} (per volume {_f(vd.get('mean'))} ± {_f(vd.get('std'))}), "
            f"HD95 {_f(hd.get('mean'), 2)} ± {_f(hd.get('std'), 2)} on {len(result.get('patients') or [])} patients, "
            f"{result.get('num_volumes')} volumes, {result.get('num_slices')} slices")


def table(result: dict[str, Any]) -> str:
    """Per class: dataset-level Dice, per-volume Dice and HD95 (mean ± std (n)), missed/spurious volumes."""
    size = result.get("image_size")
    lines = [
        f"checkpoint  {result.get('checkpoint', '-')}",
        f"pool        {result.get('pool')}",
        f"test set    {len(result.get('patients') or [])} patients, {result.get('num_volumes')} volumes, "
        f"{result.get('num_slices')} slices" + (f", evaluated at {size[0]} x {size[1]}" if size else ""),
        "",
        f"{'class':<16} {'Dice (dataset)':>14}  {'Dice per volume (n)':<24} {'HD95 per volume (n)':<22} "
        f"{'missed':>6} {'spurious':>8}",
    ]
    classes = result.get("classes") or {}
    # In the pool's class order (a JSON file written with sorted keys lists them alphabetically).
    order = [n for n in result.get("class_names") or [] if n in classes] or list(classes)
    for name, c in ((n, classes[n]) for n in order):
        lines.append(f"{name:<16} {_f(c.get('dice')):>14}  {_pm(c.get('volume_dice'), 4):<24} "
                     f"{_pm(c.get('hd95'), 2):<22} {c.get('missed_volumes', 0):>6} {c.get('spurious_volumes', 0):>8}")
    lines.append(f"{'mean foreground':<16} {_f(result.get('dice')):>14}  {_pm(result.get('volume_dice'), 4):<24} "
                 f"{_pm(result.get('hd95'), 2)}")
    lines += [
        "",
        "Dice (dataset): from TP/FP/FN summed over the test set. Per volume: a volume's slices stacked in "
        "slice order;",
        "mean ± std over volumes (n: volumes where the class is in the label, and for HD95 also predicted).",
        "missed: volumes with the class in the label but not predicted; spurious: predicted, not in the label.",
        f"HD95 unit: {result.get('hd95_unit', '-')}.",
    ]
    return "\n".join(lines)
