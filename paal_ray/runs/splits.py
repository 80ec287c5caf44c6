"""Test patients held out, patient-level folds and the seeded initial labelled set.

With ``test.holdout_patients`` set, that many patients are first taken out of the pool as the test
set (drawn with ``test.seed`` from the sorted patient IDs: the same patients for every run seed and
fold of a config); they never enter training, validation or selection. Folds then follow the
paper's protocol on the remaining patients: sorted patient IDs cut into contiguous parts; the
held-out part is the validation set (IQ trigger, early stopping, reported Dice). Slices of one
patient never straddle test, training and validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


class SplitError(ValueError):
    """The pool cannot be split as asked (too few patients for the folds, empty training set)."""


@dataclass(frozen=True)
class FoldSplit:
    train_ids: list[str]  # sorted slice ids of the training patients (the AL pool)
    val_ids: list[str]  # sorted slice ids of the held-out patients
    val_patients: list[str]


@dataclass(frozen=True)
class TestHoldout:
    test_ids: list[str]  # sorted slice ids of the test patients
    test_patients: list[str]  # sorted
    rest: pa.Table  # the index without them: what the folds split


def hold_out_test_patients(index: pa.Table, count: int, seed: int, *, min_left: int = 1) -> TestHoldout:
    """Take ``count`` patients out of a pool index (columns slice_id, patient_id) as the test set,
    drawn without replacement from the sorted patient IDs with ``seed``; ``min_left`` patients must
    remain (the folds need at least cv.num_folds)."""
    patients = index.column("patient_id").to_pylist()
    unique = sorted(set(patients))
    if count < 0:
        raise SplitError(f"test.holdout_patients={count}: must be >= 0")
    if len(unique) - count < min_left:
        raise SplitError(f"test.holdout_patients={count} leaves {len(unique) - count} of the pool's {len(unique)} "
                         f"patients, fewer than the {min_left} the folds need (cv.num_folds)")
    rng = np.random.default_rng(seed)
    test_patients = sorted(unique[i] for i in rng.choice(len(unique), size=count, replace=False))
    held = set(test_patients)
    in_test = np.array([p in held for p in patients], dtype=bool)
    slice_ids = index.column("slice_id").to_pylist()
    return TestHoldout(test_ids=sorted(s for s, t in zip(slice_ids, in_test, strict=True) if t),
                       test_patients=test_patients, rest=index.filter(pa.array(~in_test)))


def patient_fold_split(index: pa.Table, fold: int, num_folds: int) -> FoldSplit:
    """Split a pool index (columns slice_id, patient_id) into training and validation slices."""
    if not 0 <= fold < num_folds:
        raise SplitError(f"cv.fold={fold} is outside 0..{num_folds - 1} (cv.num_folds={num_folds})")
    slice_ids = index.column("slice_id").to_pylist()
    patients = index.column("patient_id").to_pylist()
    unique = sorted(set(patients))
    if len(unique) < num_folds:
        raise SplitError(f"the pool has {len(unique)} patients, fewer than cv.num_folds={num_folds}")
    # Contiguous parts of the sorted IDs; sizes differ by at most one (np.array_split).
    parts = np.array_split(np.arange(len(unique)), num_folds)
    val_patients = [unique[i] for i in parts[fold]]
    held_out = set(val_patients)
    train_ids = sorted(s for s, p in zip(slice_ids, patients, strict=True) if p not in held_out)
    val_ids = sorted(s for s, p in zip(slice_ids, patients, strict=True) if p in held_out)
    if not train_ids:
        raise SplitError(f"fold {fold} leaves no training slices")
    return FoldSplit(train_ids=train_ids, val_ids=val_ids, val_patients=val_patients)


def derive_seed(*parts: int) -> int:
    """A stable 32-bit seed from the run seed and step coordinates (fold, round, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def initial_set(train_ids: list[str], count: int, seed: int) -> list[str]:
    """``count`` slices drawn without replacement from the sorted training ids, sorted."""
    ids = sorted(train_ids)
    if count > len(ids):
        raise SplitError(f"initial set of {count} slices is larger than the training pool ({len(ids)})")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), size=count, replace=False)
    return sorted(ids[i] for i in chosen)
