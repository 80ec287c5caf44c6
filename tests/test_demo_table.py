"""The demo's closing table: Dice by round for each run side by side, then per-class Dice at the end."""

from __future__ import annotations

import json

from paal_ray.data.pool import Pool
from paal_ray.demo import dice_table
from tests.conftest import make_blob_pool


def _fake_run(root, pool, curve):
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(f"pool: {pool}\n")
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in curve))
    return root


def test_dice_table_rows_by_round_and_final_per_class(tmp_path):
    pool = make_blob_pool(tmp_path / "pool", cases=1, slices=1, size=8, num_classes=4)  # classes c1, c2, c3
    epoch = {"kind": "epoch", "round": 0, "epoch": 1, "labeled_count": 12, "val_dice": 0.1}
    paal = _fake_run(tmp_path / "paal", pool, [
        epoch,
        {"kind": "round", "round": 0, "labeled_count": 12, "val_dice": 0.6},
        {"kind": "round", "round": 1, "labeled_count": 31, "val_dice": 0.7},
        {"kind": "final", "round": 2, "labeled_count": 50, "val_dice": 0.9,
         "val_dice_per_class": [1.0, 0.95, 0.9, 0.85]},
    ])
    rand = _fake_run(tmp_path / "random", pool, [
        {"kind": "round", "round": 0, "labeled_count": 12, "val_dice": 0.6},
        {"kind": "round", "round": 1, "labeled_count": 31, "val_dice": None},
    ])
    lines = dice_table({"paal": paal, "random": rand}).splitlines()
    assert lines[0].split() == ["round", "labelled", "paal", "Dice", "random", "Dice"]
    assert lines[1].split() == ["0", "12", "0.6000", "0.6000"]
    assert lines[2].split() == ["1", "31", "0.7000", "-"]  # a missing value shows as "-"
    assert lines[3].split() == ["final", "50", "0.9000", "-"]  # the random run has not finished
    assert lines[4] == "paal final Dice per class: c1 0.950, c2 0.900, c3 0.850"
    assert len(lines) == 5  # no per-class line without values, no labelled line without labelled.json
    ids = Pool.open(pool).index(["slice_id", "present"]).to_pydict()
    (paal / "labelled.json").write_text(json.dumps({"labelled": ids["slice_id"]}))
    counts = [sum(f[k] for f in ids["present"]) for k in (1, 2, 3)]
    assert dice_table({"paal": paal}).splitlines()[-1] == (
        f"paal labelled 1 slices; showing each class: c1 {counts[0]}, c2 {counts[1]}, c3 {counts[2]}")
