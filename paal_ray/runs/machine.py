"""The active-learning run as a persisted state machine.

    init -> { train -> query -> annotate -> ingest } x T -> final [-> test] -> done

``test`` runs when the run has a held-out test set (``test`` config section, recorded in
split.json at init): the final model is evaluated there into RUN/test.json (evaluation/testset.py).

Each step reads what it needs from the run folder, does its work, writes its outputs atomically
and only then advances ``state.json``; a run killed anywhere (kill -9 included) resumes from the
last finished step. Steps are idempotent: training re-runs the same Ray Train round (same
storage path and name: Ray Train resumes it), a query whose result was written is reused, label
ingest sets (not appends) the round's selection. The trainer, the query engine and the strategy
registry are injected, so the loop can be tested with small fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paal_ray.atomic import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from paal_ray.config import RunConfig, dump_config, load_config
from paal_ray.data.pool import Pool
from paal_ray.query.api import QueryRequest, QueryResult
from paal_ray.runs import shared_round
from paal_ray.runs.oracle import make_oracle
from paal_ray.runs.splits import derive_seed, initial_set, patient_fold_split
from paal_ray.runs.state import Labelled, RunPaths, RunState, RunStateError
from paal_ray.training.api import RoundResult, RoundSpec

TrainFn = Callable[[RoundSpec], RoundResult]
QueryFn = Callable[[QueryRequest], QueryResult]
EvaluateFn = Callable[[Any], dict]  # EvalRequest -> metrics (evaluation/predict.py)
Hook = Callable[[str, RunState], None]

# Purposes mixed into derived seeds, so the initial set, training and queries draw independently.
# A final phase trained from scratch draws its weights from (seed, fold, _SEED_FINAL) alone: every
# strategy of one seed and fold starts it from the same point.
_SEED_INIT, _SEED_TRAIN, _SEED_QUERY, _SEED_FINAL = 101, 202, 303, 404


class BudgetError(ValueError):
    """The budget leaves nothing to query (b = 0) or asks for more than the pool holds."""


@dataclass
class Services:
    """What the loop drives; defaults are the real Ray Train round and query engine."""

    train: TrainFn | None = None
    query: QueryFn | None = None
    strategy: Callable[..., Any] | None = None  # strategies.get(name, **params)
    evaluate: EvaluateFn | None = None  # the test-set evaluation (a Ray task)

    def resolved(self) -> Services:
        train, query, strategy, evaluate = self.train, self.query, self.strategy, self.evaluate
        if train is None:
            from paal_ray.training import train_round as train
        if query is None:
            from paal_ray.query import run_query as query
        if strategy is None:
            from paal_ray.query.strategies import get as strategy
        if evaluate is None:
            from paal_ray.evaluation.predict import evaluate_on_ray as evaluate
        return Services(train=train, query=query, strategy=strategy, evaluate=evaluate)


@dataclass
class Outcome:
    status: str  # "done" | "waiting" | "stopped"
    state: RunState
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_root(cfg: RunConfig) -> Path:
    return (Path(cfg.workspace) / cfg.name).absolute()


def effective_config(cfg: RunConfig, strategy_obj: Any) -> RunConfig:
    """The config a run really uses: the strategy's model settings (MC dropout's dropout layers)
    and, when ``schedule.mode`` is unset, the strategy's own query schedule. Written to the run's
    config.yaml, so a resumed run and a report read what was done."""
    update: dict[str, Any] = {}
    overrides = dict(getattr(strategy_obj, "model_overrides", None) or {})
    if overrides:
        update["model"] = cfg.model.model_copy(update=overrides)
    if cfg.schedule.mode is None:
        update["schedule"] = cfg.schedule.model_copy(update={"mode": strategy_obj.default_schedule})
    return cfg.model_copy(update=update, deep=True) if update else cfg


class RunMachine:
    def __init__(self, root: str | Path, cfg: RunConfig, *, services: Services | None = None,
                 hook: Hook | None = None, echo: Callable[[str], None] = print):
        self.paths = RunPaths(Path(root).absolute())
        self.pool = Pool.open(cfg.pool)  # first: a wrong path is the likeliest mistake
        self.services = (services or Services()).resolved()
        self.strategy_obj = self.services.strategy(cfg.strategy.name, **cfg.strategy.params)
        self.cfg = effective_config(cfg, self.strategy_obj)
        self.hook = hook or (lambda point, state: None)
        self.echo = echo
        self.oracle = make_oracle(self.cfg.oracle.kind, self.pool, self.paths, self.cfg.oracle.inbox)
        self.state = RunState.load(self.paths) if self.paths.state.is_file() else None

    # -- creating and opening -------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, root: str | Path | None = None, **kwargs) -> RunMachine:
        root = Path(root).absolute() if root else run_root(cfg)
        paths = RunPaths(root)
        if paths.state.exists() or paths.config.exists():
            raise FileExistsError(f"{root}: a run already exists there; continue it with `paal run --resume {root}` "
                                  f"or choose another name (--set name=...)")
        root.mkdir(parents=True, exist_ok=True)
        machine = cls(root, cfg, **kwargs)
        # The effective config (strategy model overrides applied) is what resume reads back.
        atomic_write_text(paths.config, dump_config(machine.cfg))
        return machine

    @classmethod
    def open(cls, root: str | Path, **kwargs) -> RunMachine:
        paths = RunPaths(Path(root).absolute())
        if not paths.config.is_file():
            raise RunStateError(f"{paths.config}: missing; {paths.root} is not a run folder")
        return cls(paths.root, load_config(paths.config), **kwargs)

    @classmethod
    def open_or_create(cls, cfg: RunConfig, root: str | Path | None = None, **kwargs) -> RunMachine:
        """Continue the run in ``root`` if one was started there (with its saved config), else start
        ``cfg`` there: how the demo, CV folds and sweep trials pick up where they stopped."""
        root = Path(root).absolute() if root else run_root(cfg)
        if RunPaths(root).config.exists():
            return cls.open(root, **kwargs)
        return cls.create(cfg, root, **kwargs)

    # -- driving --------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> Outcome:
        steps = 0
        while True:
            phase = self.state.phase if self.state else "init"
            if phase == "done":
                return Outcome("done", self.state, f"run finished: final Dice {_fmt(self.state.final_dice)}")
            if max_steps is not None and steps >= max_steps:
                return Outcome("stopped", self.state, f"stopped before {phase}")
            waiting = getattr(self, f"_step_{phase}")()
            steps += 1
            self.hook(f"after:{phase}", self.state)
            if waiting is not None:
                return Outcome("waiting", self.state, waiting)

    def _save(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self.state, k, v)
        self.state.save(self.paths)

    def _split(self) -> tuple[list[str], list[str]]:
        import json

        data = json.loads(self.paths.split.read_text())
        return data["train_ids"], data["val_ids"]

    # -- steps ----------------------------------------------------------------------------------
    def _step_init(self) -> None:
        cfg = self.cfg
        from paal_ray.evaluation.testset import choose_test_set

        # Test patients first: held out of the folds, so never trained on, validated on or selected.
        index, test = choose_test_set(cfg, self.pool, self.pool.index(["slice_id", "patient_id"]), echo=self.echo)
        split = patient_fold_split(index, cfg.cv.fold, cfg.cv.num_folds)
        n_train = len(split.train_ids)
        if cfg.budget.full_data:
            return self._init_state(split, split.train_ids, rounds=0, b=0, test=test)
        b = cfg.budget.per_round(n_train)
        if b < 1:
            raise BudgetError(f"budget: b = floor((floor({cfg.budget.max_ratio} x {n_train}) - floor("
                              f"{cfg.budget.init_ratio} x {n_train})) / {cfg.budget.rounds}) = {b}; raise "
                              f"budget.max_ratio or lower budget.rounds")
        n_init = cfg.budget.initial_count(n_train)
        total = n_init + cfg.budget.rounds * b
        if total > n_train:
            raise BudgetError(f"budget: {total} slices asked for, the training pool holds {n_train}")
        initial = initial_set(split.train_ids, n_init, derive_seed(cfg.seed, cfg.cv.fold, _SEED_INIT))
        self._init_state(split, initial, rounds=cfg.budget.rounds, b=b, test=test)

    def _init_state(self, split, initial: list[str], *, rounds: int, b: int, test: dict | None) -> None:
        """Write the split, the initial labelled set and the first state (a full-data run: every
        training slice labelled, no rounds, straight to the final phase)."""
        from paal_ray.provenance import source_commit, versions

        cfg = self.cfg
        n_train = len(split.train_ids)
        total = len(initial) + rounds * b
        # The source commit is recorded but not fingerprinted: round 0 stays shared across commits
        # that leave the package versions and training config as they were.
        atomic_write_json(self.paths.versions, {**versions(), "commit": source_commit()})
        atomic_write_json(self.paths.split, {"fold": cfg.cv.fold, "num_folds": cfg.cv.num_folds,
                                             "val_patients": split.val_patients, "train_ids": split.train_ids,
                                             "val_ids": split.val_ids, **({"test": test} if test else {})})
        Labelled(initial=initial).save(self.paths)
        self.oracle.prepare(initial, split.val_ids)
        strategy = "full" if cfg.budget.full_data else cfg.strategy.name
        self.state = RunState(
            name=cfg.name, strategy=strategy, fold=cfg.cv.fold, rounds=rounds, per_round=b,
            n_train=n_train, budget=total, round=0, phase="train" if rounds else "final", labeled_count=len(initial),
        )
        self.state.save(self.paths)
        plan = (f"{rounds} rounds of {b}, budget {total}; strategy {strategy} (schedule {cfg.schedule.mode})"
                if rounds else "full data: final phase only")
        self.echo(f"[init] {self.paths.root}: {n_train} training slices ({len(split.val_ids)} validation, fold "
                  f"{cfg.cv.fold}/{cfg.cv.num_folds}); {len(initial)} labelled, {plan}; oracle {cfg.oracle.kind}")
        if test:
            self.echo(f"[init] test set: {len(test['patients'])} patients, {len(test['slice_ids'])} slices "
                      f"({'held out of the pool' if test['source'] == 'holdout' else test['pool']})")

    def _round_spec(self, phase: str, name: str, train_ids: list[str], val_ids: list[str], seed: int,
                    pseudo_ids: list[str], init_checkpoint: str | None) -> RoundSpec:
        return RoundSpec(
            pool_path=self.oracle.training_pool(), train_ids=train_ids, val_ids=val_ids, phase=phase,
            storage_path=str(self.paths.train_storage), name=name, config=self.cfg,
            in_channels=self.pool.channels, num_classes=self.pool.num_classes, seed=seed,
            init_checkpoint=init_checkpoint, extension=getattr(self.strategy_obj, "training_extension", None),
            pseudo_ids=pseudo_ids,
        )

    def _train(self, r: int, phase: str, name: str, result_path: Path) -> RoundResult:
        if result_path.is_file():  # trained before a crash that came before the state update
            import json

            return RoundResult(**json.loads(result_path.read_text()))
        train_ids, val_ids = self._split()
        labelled = Labelled.load(self.paths).all()
        pseudo: list[str] = []
        if r > 0 and self.paths.query_result(r - 1).is_file():
            import json

            pseudo = json.loads(self.paths.query_result(r - 1).read_text()).get("pseudo_ids", [])
        seed, init = derive_seed(self.cfg.seed, self.cfg.cv.fold, _SEED_TRAIN, r), self.state.checkpoint
        if phase == "final" and self.cfg.schedule.final_init == "scratch":
            seed, init = derive_seed(self.cfg.seed, self.cfg.cv.fold, _SEED_FINAL), None
        spec = self._round_spec(phase, name, labelled, val_ids, seed, pseudo, init)
        runs_folder = self.paths.root.parent
        key = self._round0_key(spec) if r == 0 and phase == "query" and self.cfg.reuse_round0 else None
        result = shared_round.adopt(runs_folder, key, self.paths.train_storage / f"{name}-shared") if key else None
        if result is not None:
            self.echo(f"[{name}] round 0 adopted from a run that trained it identically "
                      f"({shared_round.shared_folder(runs_folder, key)})")
        else:
            self.echo(f"[{name}] training on {len(labelled)} labelled slices ({phase} phase)")
            result = self.services.train(spec)
            if key:
                shared_round.publish(runs_folder, key, result)
        atomic_write_json(result_path, asdict(result))
        return result

    def _round0_key(self, spec: RoundSpec) -> str:
        from paal_ray.provenance import versions

        return shared_round.fingerprint(self.cfg, pool=str(self.pool.path), train_ids=spec.train_ids,
                                        val_ids=spec.val_ids, extension=spec.extension, versions=versions())

    def _log_epochs(self, r: int, phase: str, result: RoundResult) -> None:
        seen = {(m.get("kind"), m.get("round"), m.get("epoch")) for m in read_jsonl(self.paths.metrics)}
        for e in result.epochs:
            rec = {
                "kind": "epoch", "round": r, "phase": phase, "epoch": e.get("global_epoch"),
                "labeled_count": self.state.labeled_count, "val_dice": e.get("val_dice"),
                "val_dice_per_class": e.get("val_dice_per_class"), "ap_error": e.get("val_ap_mae"),
                "train_loss": e.get("train_loss"), "ap_loss": e.get("ap_loss"), "lr": e.get("lr"),
                "seconds": e.get("seconds"),
            }
            # No echo per epoch: the training workers print each epoch live as it ends.
            if ("epoch", r, rec["epoch"]) not in seen:
                append_jsonl(self.paths.metrics, rec)

    def _per_class(self, epoch: dict) -> str:
        """' (organ 0.94, core 0.88, lesion 0.00)': the foreground classes of one epoch's validation."""
        per = epoch.get("val_dice_per_class") or []
        names = self.pool.class_names
        return " (" + ", ".join(f"{n} {_fmt(d)}" for n, d in list(zip(names, per, strict=False))[1:]) + ")" if per else ""

    def _append_once(self, rec: dict) -> None:
        key = (rec["kind"], rec["round"], rec.get("epoch"))
        if key not in {(m.get("kind"), m.get("round"), m.get("epoch")) for m in read_jsonl(self.paths.metrics)}:
            append_jsonl(self.paths.metrics, rec)

    def _step_train(self) -> None:
        r = self.state.round
        result = self._train(r, "query", f"round-{r:03d}", self.paths.train_result(r))
        self._log_epochs(r, "query", result)
        last = result.epochs[-1] if result.epochs else {}
        self.echo(f"[round {r}] trained to epoch {result.global_epoch} (stopped by {result.stopped_by}); "
                  f"val Dice {_fmt(last.get('val_dice'))}{self._per_class(last)}")
        self._save(checkpoint=result.checkpoint, global_epoch=result.global_epoch, best_score=result.best_score,
                   phase="query")

    def _step_query(self) -> None:
        import json

        r = self.state.round
        out = self.paths.query_result(r)
        if out.is_file() and self.paths.selection(r).is_file():
            chosen = json.loads(out.read_text())["slice_ids"]
        else:
            train_ids, _ = self._split()
            labelled = Labelled.load(self.paths).all()
            taken = set(labelled)
            unlabelled = [s for s in train_ids if s not in taken]
            b = min(self.state.per_round, len(unlabelled))
            self.echo(f"[round {r}] querying {b} of {len(unlabelled)} unlabelled slices ({self.cfg.strategy.name})")
            req = QueryRequest(
                pool_path=str(self.pool.path), unlabelled_ids=unlabelled, labelled_ids=labelled,
                checkpoint=self.state.checkpoint, strategy=self.cfg.strategy, budget=b,
                seed=derive_seed(self.cfg.seed, self.cfg.cv.fold, _SEED_QUERY, r),
                out_path=str(self.paths.selection(r)), image_size=self.cfg.model.image_size,
                scaling=self.cfg.scaling, round_index=r, label_smoothing=self.cfg.train.label_smoothing,
                compute_true_dice=self.cfg.oracle.kind == "simulated" and self.cfg.log_ap_health,
            )
            self.paths.round_dir(r).mkdir(parents=True, exist_ok=True)
            result = self.services.query(req)
            chosen = list(result.slice_ids)
            _check_selection(chosen, set(unlabelled), b, r)
            atomic_write_json(out, {
                "slice_ids": chosen, "table_path": result.table_path, "timings": result.timings,
                "kmeans_backend": result.kmeans_backend, "ap_pearson": result.ap_pearson,
                "ap_pearson_per_class": result.ap_pearson_per_class, "pseudo_ids": list(result.pseudo_ids),
                "extra": result.extra,
            })
            self.echo(f"[round {r}] selected {len(chosen)} slices in {_fmt(result.timings.get('total_s'), 1)} s"
                      f"; AP Pearson r {_fmt(result.ap_pearson)}")
        self.hook("query:selected", self.state)
        self._save(phase="annotate")

    def _step_annotate(self) -> str | None:
        import json

        r = self.state.round
        chosen = json.loads(self.paths.query_result(r).read_text())["slice_ids"]
        outcome = self.oracle.annotate(r, chosen)
        if not outcome.done:
            self._save(waiting_for=outcome.waiting_for)
            self.echo(f"[round {r}] {outcome.message}")
            return outcome.message
        self.echo(f"[round {r}] {outcome.message}")
        self._save(waiting_for=None, phase="ingest")
        return None

    def _step_ingest(self) -> None:
        import json

        r = self.state.round
        query = json.loads(self.paths.query_result(r).read_text())
        chosen = query["slice_ids"]
        labelled = Labelled.load(self.paths)
        earlier = set(labelled.initial).union(*(set(v) for k, v in labelled.rounds.items() if k != r))
        twice = earlier.intersection(chosen)
        if twice:
            raise RunStateError(f"{self.paths.query_result(r)}: slices already labelled in an earlier round: "
                                f"{sorted(twice)[:5]}")
        labelled.rounds[r] = chosen  # set, not append: re-ingesting after a crash changes nothing
        labelled.save(self.paths)
        self.hook("ingest:labelled", self.state)
        self.oracle.ingest(r)
        train = json.loads(self.paths.train_result(r).read_text())
        last = train["epochs"][-1] if train["epochs"] else {}
        trained_on = len(labelled.all()) - len(chosen)
        self._append_once({
            "kind": "round", "round": r, "epoch": train["global_epoch"], "labeled_count": trained_on,
            "labeled_after": len(labelled.all()), "selected": len(chosen), "val_dice": last.get("val_dice"),
            "val_dice_per_class": last.get("val_dice_per_class"), "ap_error": last.get("val_ap_mae"),
            "ap_pearson": query.get("ap_pearson"), "query_s": (query.get("timings") or {}).get("total_s"),
            "pseudo_labelled": len(query.get("pseudo_ids") or []),
            "kmeans_backend": query.get("kmeans_backend"), "kmeans": (query.get("extra") or {}).get("kmeans"),
            "stopped_by": train["stopped_by"],
        })
        nxt = r + 1
        self.echo(f"[round {r}] done: {trained_on} -> {len(labelled.all())} labelled "
                  f"(budget {self.state.budget}); val Dice {_fmt(last.get('val_dice'))}")
        self._save(round=nxt, labeled_count=len(labelled.all()),
                   phase="train" if nxt < self.state.rounds else "final")

    def _step_final(self) -> None:
        r = self.state.rounds
        result = self._train(r, "final", "final", self.paths.root / "final.json")
        self._log_epochs(r, "final", result)
        final_epochs = [e for e in result.epochs if e.get("val_dice") is not None]
        best = max(final_epochs, key=lambda e: e["val_dice"]) if final_epochs else {}
        last = final_epochs[-1] if final_epochs else {}
        # The final model: a fixed-length final phase keeps its last epoch (the same training for
        # every labelled set); an early-stopped one its best validation epoch (the paper).
        fixed = self.cfg.schedule.final_epochs is not None
        chosen = last if fixed else best
        checkpoint = result.checkpoint if fixed else (result.best_checkpoint or result.checkpoint)
        final = chosen.get("val_dice", result.best_score)
        self._append_once({
            "kind": "final", "round": r, "epoch": result.global_epoch, "labeled_count": self.state.labeled_count,
            "val_dice": final, "val_dice_per_class": chosen.get("val_dice_per_class"),
            "val_dice_best": best.get("val_dice"), "val_dice_last": last.get("val_dice"),
            "final_model": "last" if fixed else "best", "model_epoch": chosen.get("global_epoch"),
            "ap_error": chosen.get("val_ap_mae"), "stopped_by": result.stopped_by, "checkpoint": checkpoint,
        })
        self.echo(f"[final] {self.state.labeled_count} labelled, epoch {result.global_epoch} "
                  f"(stopped by {result.stopped_by}): final validation Dice {_fmt(final)}{self._per_class(chosen)}"
                  f" ({'last' if fixed else 'best'} epoch; best {_fmt(best.get('val_dice'))})")
        self._save(checkpoint=result.checkpoint, global_epoch=result.global_epoch, best_score=result.best_score,
                   final_dice=final, phase="test" if self._test_set() else "done")

    def _test_set(self) -> dict | None:
        import json

        return json.loads(self.paths.split.read_text()).get("test")

    def _step_test(self) -> None:
        """The final model on the held-out test set: RUN/test.json and a "test" metrics record."""
        from paal_ray.evaluation.report import one_line
        from paal_ray.evaluation.testset import evaluate_final_model, metrics_record

        finals = [m for m in read_jsonl(self.paths.metrics) if m.get("kind") == "final"]
        if not finals:
            raise RunStateError(f"{self.paths.metrics}: no 'final' record; the final phase did not finish")
        final, test = finals[-1], self._test_set()
        self.echo(f"[test] evaluating the final model on {len(test['slice_ids'])} test slices")
        result = evaluate_final_model(self.paths.root, test, final, self.cfg, self.services.evaluate)
        self._append_once(metrics_record(result, final))
        self.echo(f"[test] {one_line(result)} (validation Dice {_fmt(final.get('val_dice'))})")
        self._save(phase="done")


def _check_selection(chosen: list[str], unlabelled: set[str], b: int, r: int) -> None:
    """The query engine's answer must be b distinct slices from the unlabelled pool."""
    if len(set(chosen)) != len(chosen):
        raise RunStateError(f"round {r}: the query returned duplicate slices")
    outside = [s for s in chosen if s not in unlabelled]
    if outside:
        raise RunStateError(f"round {r}: the query returned slices that are not unlabelled: {outside[:5]}")
    if len(chosen) != b:
        raise RunStateError(f"round {r}: the query returned {len(chosen)} slices, {b} were asked for")


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)
