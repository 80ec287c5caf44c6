"""A comparison's evidence beyond mean Dice: paired differences, what was selected, AP consistency."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import fake_services, small_cfg

from paal_ray.data.pool import Pool
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.state import Labelled, RunPaths
from paal_ray.sweeps.evidence import (
    annotation_distribution,
    ap_consistency,
    class_presence,
    paired_differences,
    query_seconds,
)


def test_paired_differences_count_wins_per_replicate():
    values = {("paal", "0"): 0.80, ("paal", "1"): 0.70, ("paal", "2"): 0.75,
              ("random", "0"): 0.78, ("random", "1"): 0.72, ("random", "2"): 0.70,
              ("entropy", "0"): 0.60}
    out = {p.setting: p for p in paired_differences(values, reference="random")}
    assert set(out) == {"paal", "entropy"}
    assert out["paal"].diffs == pytest.approx({"0": 0.02, "1": -0.02, "2": 0.05})
    assert out["paal"].wins == 2 and out["entropy"].wins == 0 and list(out["entropy"].diffs) == ["0"]


def test_annotation_distribution_counts_queried_slices_against_the_pool(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path)
    RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
    root = tmp_path / "r"
    pool = Pool.open(blob_pool)
    lab = Labelled.load(RunPaths(root))
    queried = [s for r in sorted(lab.rounds) for s in lab.rounds[r]]
    dist = annotation_distribution(root)
    presence = class_presence(pool, queried)
    assert dist["count"][0] == len(queried) == 12
    assert dist["selected"] == pytest.approx(presence.mean(0).tolist())
    assert dist["none"][0] == pytest.approx(float((~presence[:, 1:].any(1)).mean()))
    assert len(dist["pool"]) == pool.num_classes and dist["pool"][0] == 1.0  # every slice shows background


def test_ap_consistency_reads_the_last_round_and_its_correlation(tmp_path):
    root = tmp_path / "run"
    rng = np.random.default_rng(0)
    for r, noise in ((0, 0.5), (1, 0.05)):
        true = rng.random((50, 3))
        pred = np.clip(true + noise * rng.standard_normal((50, 3)), 0, 1)
        cols = {"slice_id": pa.array([f"c/{i}" for i in range(50)])}
        for key, v in (("pred_acc", pred), ("true_dice", true)):
            cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float32).reshape(-1)), 3)
        d = RunPaths(root).round_dir(r)
        d.mkdir(parents=True)
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf)
        (d / "ap_health.parquet").write_bytes(buf.getvalue())
    last = ap_consistency(root)
    assert last["round"] == 1 and last["pearson"] > 0.9
    assert last["pearson"] == pytest.approx(np.corrcoef(last["predicted"], last["actual"])[0, 1])
    assert ap_consistency(root, 0)["pearson"] < last["pearson"]
    assert ap_consistency(tmp_path / "none") is None


def test_query_seconds_come_from_the_round_records(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path)
    RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
    assert query_seconds(tmp_path / "r") == [0.01, 0.01]


def test_the_query_time_table_splits_each_query_into_scoring_clustering_and_selection(tmp_path):
    """The parts come from each round's query.json (the engine's timings); runs recorded before
    the split show their total alone."""
    import json

    from paal_ray.sweeps.evidence import query_timings
    from paal_ray.sweeps.evidence_report import RunRef, query_time_table

    def query(root: Path, r: int, **t: float) -> None:
        d = RunPaths(root).round_dir(r)
        d.mkdir(parents=True)
        (d / "query.json").write_text(json.dumps({"slice_ids": [], "timings": t}))

    for r, (sc, cl) in enumerate([(10.0, 2.0), (20.0, 4.0)]):
        query(tmp_path / "paal", r, scoring_s=sc, clustering_s=cl, selection_s=0.002, total_s=sc + cl + 0.002)
    (RunPaths(tmp_path / "paal").round_dir(2)).mkdir()  # a round whose query has not run: left out
    assert [t["scoring_s"] for t in query_timings(tmp_path / "paal")] == [10.0, 20.0]
    older = tmp_path / "older"
    older.mkdir()
    RunPaths(older).metrics.write_text(json.dumps({"kind": "round", "round": 0, "query_s": 3.0}) + "\n")
    rows = query_time_table([RunRef(tmp_path / "paal", "paal", "fold=0"), RunRef(older, "random", "fold=0")])
    assert rows[0] == "| setting | query time per round, s | scoring | clustering (KMeans) | selection |"
    paal = next(r for r in rows if r.startswith("| paal |")).split(" | ")
    assert paal[1].startswith("18.0 ± 8.5") and paal[2].startswith("15.0 ± 7.1") and paal[3].startswith("3.0 ± 1.4")
    assert paal[4].startswith("0.002")
    assert next(r for r in rows if r.startswith("| random |")).endswith(" | - | - | - |")


def test_evidence_report_puts_validation_and_test_side_by_side_with_paired_wins(blob_pool, tmp_path):
    from paal_ray.atomic import append_jsonl
    from paal_ray.sweeps.evidence_report import RunRef, evidence_markdown, evidence_png

    refs, test = [], {("paal", "0"): 0.81, ("paal", "1"): 0.79, ("random", "0"): 0.80, ("random", "1"): 0.80}
    for (setting, rep), dice in test.items():
        cfg = small_cfg(blob_pool, tmp_path, name=f"{setting}-{rep}", seed=rep, reuse_round0="false")
        RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
        root = tmp_path / f"{setting}-{rep}"
        append_jsonl(RunPaths(root).metrics, {"kind": "test", "round": 2, "dice": dice})
        refs.append(RunRef(root, setting, rep))
    md = evidence_markdown(refs, Pool.open(blob_pool).class_names, reference="random")
    assert "| paal | 0.5000 ± 0.0000 (2) | 0.8000 ± 0.0141 (2) |" in md  # the fakes' val Dice is 0.5
    assert "| paal | 0: +0.0100, 1: -0.0100 | 0.0000 ± 0.0141 (2) | 1 of 2 |" in md
    assert "*training pool* | 32 |" in md and "| paal | 12 |" in md
    assert evidence_png(refs, Pool.open(blob_pool).class_names)[:4] == b"\x89PNG"


def test_paal_report_and_the_acdc_page_carry_the_evidence(blob_pool, tmp_path):
    """`paal report` appends the evidence sections for finished runs; jobs/acdc_results.py writes the
    results page (Table 2 layout with test Dice, the full-data row, paired wins) from run folders."""
    import subprocess
    import sys

    from paal_ray.atomic import append_jsonl
    from paal_ray.sweeps.report import write_report

    runs = tmp_path / "runs"
    for name, extra in (("paal", {}), ("random", {}), ("full", {"budget.full_data": "true"})):
        cfg = small_cfg(blob_pool, runs, name=name, reuse_round0="false", **{"strategy.name": name, **extra})
        RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
        append_jsonl(RunPaths(runs / name).metrics, {"kind": "test", "round": 2, "dice": 0.7, "volume_dice": 0.6,
                                                     "hd95": 3.0})
    md = write_report(runs).read_text()
    assert "## Validation and held-out test Dice" in md and "| full |" in md and (runs / "evidence.png").is_file()
    assert "## Paired differences against random" in md and "0 of 1 |" in md
    repo = Path(__file__).resolve().parents[2]
    # PAAL's rounds as a run that logs the AP's health writes them: its picks lowest in predicted Dice
    unlabelled = [s for s in Pool.open(blob_pool).slice_ids() if s.endswith(("/0003", "/0004"))]
    for d in sorted((runs / "paal" / "rounds").glob("[0-9][0-9][0-9]")):
        picked = pq.read_table(d / "selection.parquet").column("slice_id").to_pylist()
        ids = picked + [s for s in unlabelled if s not in picked]
        pred = [[1.0, 0.1, 0.1] if s in picked else [1.0, 0.9, 0.9] for s in ids]
        pq.write_table(pa.table({"slice_id": ids, "pred_acc": pred, "true_dice": pred}), d / "ap_health.parquet")
    out = subprocess.run([sys.executable, str(repo / "jobs/acdc_results.py"), str(runs), "--out", str(tmp_path / "docs")],
                         capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "docs" / "acdc.md").read_text()
    picks = page[page.index("## What each strategy queries"):]
    assert "| paal | 100.0% | " in picks and "| random |" not in picks  # the oracle takes PAAL's picks; random logs none
    assert "| full | 32 | 84.0 ± 0.0 (1) |" in page  # the fakes: Dice 0.2 + 0.02 x labelled
    assert "| paal | 15 |" in page and "70.0 ± 0.0 (1) | 60.0 ± 0.0 (1) | 3.0 ± 0.0 (1) |" in page
    assert (tmp_path / "docs" / "acdc-curves.png").is_file() and (tmp_path / "docs" / "acdc-evidence.png").is_file()


def test_final_noise_retrains_the_final_phase_reproducibly_and_the_page_pairs_the_means(blob_pool, tmp_path):
    """jobs/final_noise.py retrains a finished run's final phase from its labelled set, per seed (the
    same seed twice: the same Dice), skips what its --out already holds, and jobs/acdc_results.py
    --final-noise tabulates the seeds per run and pairs each method with random on the mean."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    runs = tmp_path / "runs"
    for name in ("paal", "random"):
        cfg = small_cfg(blob_pool, runs, name=name, reuse_round0="false", **{"strategy.name": name})
        RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()

    def noise(out: Path, seeds: str, *run_names: str, jobs: int = 1, extra=()) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(repo / "jobs/final_noise.py"), *(str(runs / n) for n in run_names), "--seeds", seeds,
               "--epochs", "1", "--set", "schedule.final_epochs=2", "--set", "model.image_size=32", "--out", str(out),
               "--jobs", str(jobs), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
        assert res.returncode == 0, res.stderr
        return res

    out = tmp_path / "noise.jsonl"
    first = noise(out, "0,1", "paal", "random", jobs=2)  # two processes at once
    assert first.stdout.startswith("4 trainings to run (2 at a time)")
    recs = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: (r["run"], r["seed"]))
    assert [(Path(r["run"]).name, r["seed"]) for r in recs] == [("paal", 0), ("paal", 1), ("random", 0), ("random", 1)]
    assert all(0 <= r["val_dice"] <= 1 and len(r["val_per_class"]) == 3 and r["labelled"] == 15 for r in recs)
    again = noise(tmp_path / "again.jsonl", "0", "paal", jobs=2)
    assert json.loads((tmp_path / "again.jsonl").read_text())["val_dice"] == recs[0]["val_dice"]  # same seed, same model
    assert "paal seed 0" in again.stdout
    # all done (the thread count is where it runs, not what it trains): nothing retrained, nothing appended
    res = noise(out, "0,1", "paal", "random", extra=["--set", "scaling.train_threads=1"])
    assert res.stdout.strip() == "0 trainings to run (1 at a time)" and len(out.read_text().splitlines()) == 4

    variant = "schedule.final_epochs=2 model.image_size=32 scaling.train_threads=1"  # threads: not a variant
    page = subprocess.run([sys.executable, str(repo / "jobs/acdc_results.py"), str(runs), "--out", str(tmp_path / "docs"),
                           "--final-noise", str(out), "--headline", variant], capture_output=True, text=True, cwd=repo)
    assert page.returncode == 0, page.stderr
    md = (tmp_path / "docs" / "acdc.md").read_text()
    assert "## Final phase retrained from several seeds" in md
    assert "**Variant: `schedule.final_epochs=2`, `model.image_size=32`**" in md
    paal = (recs[0]["val_dice"] + recs[1]["val_dice"]) / 2
    rand = (recs[2]["val_dice"] + recs[3]["val_dice"]) / 2
    rows = [line for line in md.splitlines() if line.startswith("| paal | ") and " | 0, 1 | " in line]
    assert len(rows) == 1 and f" | 0, 1 | {paal:.4f} ± " in rows[0] and rows[0].endswith("| - | 0 of 2 |")  # no test set
    # The headline section: the mean over seeds per run, PAAL minus each baseline per replicate.
    head = md[md.index("## The comparison: final phase retrained from seeds 0, 1"):]
    head = head[:head.index("\n## ")]
    assert f"| paal | 1 | {paal:.4f} | - |" in head  # one replicate; no test set here
    # (the fakes select alike whatever the strategy: the same labelled set, seeds and Dice for both)
    minus = [line for line in head[head.index("| PAAL minus |"):].splitlines() if line.startswith("| random | ")]
    assert len(minus) == 1 and minus[0].startswith("| random | - | - | - | - | ") and minus[0].endswith(" | 0 of 1 |")
    assert f": {paal - rand:+.4f} | " in minus[0]
    bad = subprocess.run([sys.executable, str(repo / "jobs/acdc_results.py"), str(runs), "--out", str(tmp_path / "d2"),
                          "--final-noise", str(out), "--headline", "train.lr=9"], capture_output=True, text=True, cwd=repo)
    assert bad.returncode != 0 and "--headline 'train.lr=9': no retrained run of that variant" in bad.stderr


def test_the_seed_noise_of_a_paired_difference():
    """sqrt(2 s^2 / k): s^2 the within-set variance over seeds, pooled; sets with one seed say nothing."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    from acdc_results import _difference_se

    sets = [np.array([0.7, 0.8, 0.9]), np.array([0.5, 0.5, 0.5])]  # variances 0.01 and 0: pooled 0.005
    assert _difference_se(sets) == pytest.approx(np.sqrt(2 * 0.005 / 3))
    assert np.isnan(_difference_se([np.array([0.7])]))


def test_the_headline_ranks_seed_means_pairs_paal_with_each_baseline_and_shows_the_full_level():
    """jobs/acdc_results.py's ranked section, from hand-made retraining records (no training)."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    from acdc_results import _headline

    from paal_ray.sweeps.evidence_report import RunRef

    tests = {("paal", 0): [0.80, 0.82, 0.81], ("random", 0): [0.78, 0.78, 0.78],
             ("paal", 1): [0.70, 0.70, 0.70], ("random", 1): [0.75, 0.74, 0.76]}
    refs = [RunRef(Path(f"/w/{s}{f}"), s, f"fold={f}") for s, f in tests]
    recs = [{"run": f"/w/{s}{f}", "seed": k, "variant": ("train.lr=0.003",), "val_dice": t - 0.05,
             "test_dice": t, "val_per_class": [1.0, 0.0 if (s, f, k) == ("paal", 1, 2) else 0.6, 0.7, 0.8]}
            for (s, f), ts in tests.items() for k, t in enumerate(ts)]
    md = "\n".join(_headline(recs, refs, ("train.lr=0.003",), {"full": ([0.80, 0.82], [0.85, 0.84])}))
    assert "| paal | 2 | 0.7050 ± 0.0778 | 0.7550 ± 0.0778 | 0.0050 / 0.0050 | 1 of 6 |" in md  # one seed lost the RV
    assert "| full (its own run, seed 0 only) | 2 | 0.8100 ± 0.0141 | 0.8450 ± 0.0071 | - | - |" in md
    row = next(line for line in md.splitlines() if line.startswith("| random | fold="))
    noise = np.sqrt(2 * np.mean([0.0001, 0, 0, 0.0001]) / 3)  # within-set variances of the four sets
    assert row.startswith("| random | fold=0: +0.0300, fold=1: -0.0500 | -0.0100 ± 0.0566 | 1 of 2 | "
                          f"{noise:.4f} | fold=0: +0.0300, fold=1: -0.0500 |")


def test_the_page_pairs_methods_on_their_common_folds_and_knows_each_methods_planned_folds():
    """PAAL and random have folds 0-4, the ablation 0-2: PAAL minus max-entropy pairs folds 0-2 only;
    the status is complete only when every method has its own planned number of folds, and says when
    the required folds are in and only the planned extras are missing."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    from acdc_results import APVAL, PAGES, PLANNED_FOLDS, _headline, _status

    from paal_ray.sweeps.evidence_report import RunRef

    folds = {"paal": range(5), "random": range(5), "max_entropy": range(3)}
    refs = [RunRef(Path(f"/w/{s}{f}"), s, f"fold={f}") for s, fs in folds.items() for f in fs]
    recs = [{"run": str(r.root), "seed": k, "variant": (), "val_dice": 0.7, "val_per_class": [1, 0.6, 0.7, 0.8],
             "test_dice": 0.8 if r.setting == "paal" else 0.75} for r in refs for k in range(2)]
    md = "\n".join(_headline(recs, refs, ()))
    row = next(line for line in md.splitlines() if line.startswith("| max_entropy | fold="))
    assert row.startswith("| max_entropy | fold=0: +0.0500, fold=1: +0.0500, fold=2: +0.0500 | 0.0500 ± 0.0000 | 3 of 3 |")
    assert next(line for line in md.splitlines() if line.startswith("| random | fold=")).count("+0.0500") == 5  # test Dice on folds 0-4

    full = refs + [RunRef(Path(f"/w/{s}{f}"), s, f"fold={f}") for s in ("paal_ap_only", "full") for f in range(3)]
    page, paper = PAGES["acdc"], PAGES["acdc-paper-lr"]
    assert PLANNED_FOLDS["paal"] == 5 and _status(full, paper[1], paper[2])[0].startswith("**Status: complete**")
    # issue 11's page requires 3 folds of each method and full data, and plans folds 3-4 of PAAL and
    # random and the AP-on-validation variant beyond them
    three = [r for r in full if r.replicate not in ("fold=3", "fold=4")]
    required = _status(three, page[1], page[2])[0]
    assert required.startswith("**Status: the required comparison is complete**")
    assert "paal 3 of 5, random 3 of 5, paal, ap_target validation 0 of 3" in required
    short = _status([r for r in three if r.root.name != "max_entropy2"], page[1], page[2])[0]
    assert short.startswith("**Status: partial.**") and "max_entropy 2" in short and "max_entropy 3" in short
    alone = _status(full[:10], page[1], page[2])[0]  # PAAL and random alone: partial
    assert alone.startswith("**Status: partial.**") and "max_entropy 3, full 3" in alone
    full += [RunRef(Path(f"/q/v{f}"), APVAL, f"fold={f}") for f in range(3)]
    assert _status(full, page[1], page[2])[0].startswith("**Status: complete**")
    assert "paal, ap_target validation 2 of 3" in _status(full[:-1], page[1], page[2])[0]
    assert "random 4 of 5" in _status([r for r in full if r.root.name != "random4"], page[1], page[2])[0]


def test_while_retraining_goes_on_every_set_is_ranked_on_the_seeds_all_have():
    """Seed 0 of every set first: the ranking keeps the sets with all three seeds; a second section
    holds every set on seed 0 alone, and its PAAL-minus rows use seed 0's numbers only."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    from acdc_results import _headline, retrained_seeds

    from paal_ray.sweeps.evidence_report import RunRef

    refs = [RunRef(Path(f"/w/{s}{f}"), s, f"fold={f}") for s in ("paal", "random", "max_entropy") for f in range(2)]
    seeds = {"paal": 3, "random": 3, "max_entropy": 1}
    recs = [{"run": str(r.root), "seed": k, "variant": (), "val_dice": 0.7, "val_per_class": [1, 0.6, 0.7, 0.8],
             "test_dice": {"paal": 0.8, "random": 0.75, "max_entropy": 0.78}[r.setting] + 0.1 * k}
            for r in refs for k in range(seeds[r.setting])]
    assert retrained_seeds(recs, refs, ()) == ((0, 1, 2), (0,))
    assert retrained_seeds(recs, refs[:2], ()) == ((0, 1, 2), (0, 1, 2))
    ranked = "\n".join(_headline(recs, refs, ()))
    assert "max_entropy" not in ranked and "| paal | 2 | 0.7000 ± 0.0000 | 0.9000 ± 0.0000 |" in ranked
    every = "\n".join(_headline(recs, refs, (), seeds=(0,)))
    assert "retrained from seed 0 (" in every and "| paal | 2 | 0.7000 ± 0.0000 | 0.8000 ± 0.0000 |" in every
    row = next(line for line in every.splitlines() if line.startswith("| max_entropy | fold="))
    assert row.startswith("| max_entropy | fold=0: +0.0200, fold=1: +0.0200 | 0.0200 ± 0.0000 | 2 of 2 |")


def test_round0_probe_trains_round_0_of_a_run_reproducibly_per_setting(blob_pool, tmp_path):
    """jobs/round0_probe.py: round 0 of a run folder (its initial set, validation fold and round-0
    seed) per --variant, validated every --every epochs: the same setting twice gives the same
    curve, another learning rate another one, and a folder that is not a run is named."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    cfg = small_cfg(blob_pool, tmp_path / "runs", name="paal", reuse_round0="false")
    RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
    run = tmp_path / "runs" / "paal"
    initial = json.loads((run / "labelled.json").read_text())["initial"]

    def probe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "jobs/round0_probe.py"), *args], capture_output=True,
                              text=True, cwd=repo)

    res = probe(str(run), "--epochs", "2", "--every", "1", "--threads", "1", "--variant", "model.image_size=32",
                "--variant", "model.image_size=32,train.lr=0.05", "--variant", "model.image_size=32")
    assert res.returncode == 0, res.stderr
    a, b, c = (json.loads(line) for line in res.stdout.splitlines())
    assert [p[0] for p in a["curve"]] == [1, 2] and a["labelled"] == len(initial) == 3
    assert all(0 <= p[1] <= 1 and len(p[2]) == 2 for p in a["curve"])  # mean and per foreground class
    assert c["curve"] == a["curve"] and b["set"] == ["model.image_size=32", "train.lr=0.05"]
    assert b["curve"] != a["curve"]
    bad = probe(str(tmp_path / "runs"))
    assert bad.returncode != 0 and "config.yaml: missing (not a started run folder)" in bad.stderr


def test_archived_runs_keep_the_evidence_without_the_weights_and_give_the_same_page(blob_pool, tmp_path):
    """jobs/archive_runs.py copies finished run folders less train/ (weights) into an archive, keys the
    retraining records by sweep/run, leaves unfinished runs out, and jobs/acdc_results.py writes the
    same ranking from the archive as from the workspace (the machine holding a workspace can be lost)."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    runs = tmp_path / "ws" / "sweep-a"
    for name in ("paal", "random"):
        cfg = small_cfg(blob_pool, runs, name=name, reuse_round0="false", **{"strategy.name": name})
        RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
        (runs / name / "train" / "round-000").mkdir(parents=True, exist_ok=True)
        (runs / name / "train" / "round-000" / "model.pt").write_bytes(b"weights")
    unfinished = small_cfg(blob_pool, runs, name="unfinished", reuse_round0="false")
    RunMachine.create(unfinished, services=fake_services(), echo=lambda s: None)  # init only: not done
    noise = tmp_path / "noise.jsonl"
    recs = [{"run": str(runs / name), "seed": seed, "set": ["train.lr=0.003", "scaling.train_threads=1"], "epochs": 2,
             "labelled": 15, "val_dice": v, "val_per_class": [0.9, v, v], "test_dice": v - 0.1, "curve": [],
             "seconds": 1.0}
            for name, base in (("paal", 0.6), ("random", 0.5)) for seed, v in ((0, base), (1, base + 0.02))]
    recs.append({**recs[0], "run": "/elsewhere/other-sweep/paal"})  # not archived: not kept
    noise.write_text("".join(json.dumps(r) + "\n" for r in recs))

    archive = tmp_path / "archive"
    cmd = [sys.executable, str(repo / "jobs/archive_runs.py"), str(runs), "--out", str(archive), "--final-noise", str(noise)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "2 finished run(s) archived; not finished, left out: unfinished" in res.stdout
    assert sorted(p.name for p in (archive / "sweep-a").iterdir()) == ["paal", "random"]
    for name in ("paal", "random"):
        kept = {p.relative_to(archive / "sweep-a" / name) for p in (archive / "sweep-a" / name).rglob("*") if p.is_file()}
        assert not any(k.parts[0] == "train" for k in kept)
        assert {Path("state.json"), Path("labelled.json"), Path("metrics.jsonl"), Path("config.yaml")} <= kept
        assert any(k.name == "selection.parquet" for k in kept)
        for k in kept:
            assert (archive / "sweep-a" / name / k).read_bytes() == (runs / name / k).read_bytes()
    merged = [json.loads(line) for line in (archive / "final-noise.jsonl").read_text().splitlines()]
    assert [(r["run"], r["seed"]) for r in merged] == [("sweep-a/paal", 0), ("sweep-a/paal", 1),
                                                       ("sweep-a/random", 0), ("sweep-a/random", 1)]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)  # archiving twice adds nothing
    assert again.returncode == 0 and "0 retraining record(s) added" in again.stdout
    assert len((archive / "final-noise.jsonl").read_text().splitlines()) == 4

    def headline(folder: Path, records: Path) -> str:
        out = tmp_path / f"page-{folder.parent.name}"
        page = subprocess.run([sys.executable, str(repo / "jobs/acdc_results.py"), str(folder), "--out", str(out),
                               "--final-noise", str(records), "--headline", "train.lr=0.003", "--pool", str(blob_pool)],
                              capture_output=True, text=True, cwd=repo)
        assert page.returncode == 0, page.stderr
        md = (out / "acdc.md").read_text()
        return md[md.index("## The comparison"):md.index("## Table 2 layout")]

    from_archive = headline(archive / "sweep-a", archive / "final-noise.jsonl")
    assert from_archive == headline(runs, noise)
    assert "| paal | 1 | 0.6100 | 0.5100 |" in from_archive and ": +0.1000 | " in from_archive

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run": "x"}\n')
    res = subprocess.run([*cmd[:-1], str(bad)], capture_output=True, text=True, cwd=repo)
    assert res.returncode != 0 and f"{bad}:1: not a jobs/final_noise.py record" in res.stderr


def test_selection_positions_counts_queried_slices_at_the_volume_ends_and_what_the_ap_predicted(blob_pool, tmp_path):
    """jobs/selection_positions.py: per strategy, the share of queried slices at a volume's first or
    last slice (the blob pool: 8 slices a case, so 2 of 8 in the pool), and the AP's predicted and
    the actual foreground Dice on them against the round's unlabelled pool."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    ids = Pool.open(blob_pool).slice_ids()
    run = tmp_path / "sweep" / "fold-0_name-paal"
    d = RunPaths(run).round_dir(0)
    d.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"phase": "done", "strategy": "paal"}))
    (run / "split.json").write_text(json.dumps({"train_ids": ids}))
    chosen = ["case000/0000", "case001/0007", "case002/0003"]  # two at an end, one in the middle
    pq.write_table(pa.table({"slice_id": chosen, "rank": [0, 1, 2]}), d / "selection.parquet")
    unlabelled = chosen + ["case003/0003", "case003/0000"]
    pred = [[1.0, 0.2, 0.4], [1.0, 0.1, 0.1], [1.0, 0.3, 0.3], [1.0, 0.9, 0.9], [1.0, 0.5, 0.5]]  # .3 .1 .3 .9 .5
    true = [[1.0, 0.0, 0.2], [1.0, 0.2, 0.2], [1.0, 0.1, 0.1], [1.0, 0.7, 0.7], [1.0, 0.0, 0.1]]  # .1 .2 .1 .7 .05
    pq.write_table(pa.table({"slice_id": unlabelled, "pred_acc": pred, "true_dice": true}), d / "ap_health.parquet")
    (tmp_path / "sweep" / "unfinished").mkdir()  # no state.json: not a finished run, ignored
    res = subprocess.run([sys.executable, str(repo / "jobs/selection_positions.py"), str(tmp_path / "sweep"),
                          "--pool", str(blob_pool)], capture_output=True, text=True, cwd=repo)
    assert res.returncode == 0, res.stderr
    paal = next(line for line in res.stdout.splitlines() if line.startswith("| paal |"))
    assert paal == "| paal | 3 | 66.7% | 0.0% | 0.233 | 0.133 | 0.420 / 0.230 |"
    # the oracle (lowest actual Dice) takes case003/0000, case000/0000, case002/0003: two of PAAL's
    # three; the top polling weights (mean -log p over all classes) take PAAL's own three
    criterion = [line for line in res.stdout.splitlines() if line.startswith("| paal |")][1]
    assert criterion == "| paal | 66.7% | 66.7% | 0.0% | 100.0% | 66.7% | 0.0% |"
    assert "| *training pools (union) of these runs* | 48 | 25.0% | 2.1% | - | - | - |" in res.stdout  # one blob slice is empty
    bad = subprocess.run([sys.executable, str(repo / "jobs/selection_positions.py"), str(tmp_path / "sweep"),
                          "--pool", str(tmp_path / "nopool")], capture_output=True, text=True, cwd=repo)
    assert bad.returncode != 0 and f"--pool {tmp_path / 'nopool'}" in bad.stderr
