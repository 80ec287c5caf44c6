"""Typed configuration: pydantic models loaded from YAML, every field overridable from the CLI.

A run is described by one ``RunConfig``. YAML files may start from a packaged preset
(``extends: cpu``) or from another file (``extends: ../base.yaml``); ``--set a.b=value`` overrides
any field after loading (values parsed as YAML, so ``--set budget.rounds=3`` is an int).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The paper's number of queries T for each final budget (section 4.1): ACDC and SegTHOR. Brain
# Tumour's table is in its preset.
PAPER_ROUNDS = {0.10: 5, 0.20: 15, 0.50: 20}


class BudgetConfig(_Strict):
    """Labelling budget as fractions of the training pool (paper section 4.1).

    T follows the budget as in the paper: with ``rounds`` unset it is looked up in
    ``rounds_by_ratio`` for ``max_ratio``, so a sweep over ``budget.max_ratio`` gets the matching T;
    an explicit ``rounds`` wins."""

    init_ratio: float = Field(0.05, gt=0, le=1, description="labelled at start (seeded random)")
    max_ratio: float = Field(0.10, gt=0, le=1, description="labelled when the budget is spent")
    rounds: int | None = Field(None, ge=1, description="number of queries T; None: from rounds_by_ratio")
    rounds_by_ratio: dict[float, int] = Field(
        default_factory=lambda: dict(PAPER_ROUNDS), description="T for each max_ratio (the paper's table)")
    full_data: bool = Field(False, description="label the whole training pool and train the final phase only "
                            "(the paper's 'Full' reference row)")

    @model_validator(mode="before")
    @classmethod
    def _rounds_from_table(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("rounds") is not None:
            return data
        table = data.get("rounds_by_ratio")
        table = PAPER_ROUNDS if table is None else table
        ratio = data.get("max_ratio", cls.model_fields["max_ratio"].default)
        try:
            matches = [int(t) for r, t in table.items() if abs(float(r) - float(ratio)) < 1e-9]
        except (TypeError, ValueError, AttributeError):
            return data  # field validation names the bad value
        if not matches:
            raise ValueError(f"budget.rounds is unset and budget.max_ratio={ratio} is not in budget.rounds_by_ratio "
                             f"({', '.join(f'{float(r):g}: {t}' for r, t in sorted(table.items()))}); "
                             f"set budget.rounds")
        return {**data, "rounds": matches[0]}

    def per_round(self, n_train: int) -> int:
        """b = floor((floor(max% N) - floor(init% N)) / T)."""
        return (int(self.max_ratio * n_train) - int(self.init_ratio * n_train)) // self.rounds

    def initial_count(self, n_train: int) -> int:
        return max(1, int(self.init_ratio * n_train))


class StrategyConfig(_Strict):
    name: str = "paal"
    params: dict[str, Any] = Field(default_factory=dict, description="strategy-specific parameters")


class ScheduleConfig(_Strict):
    """When a round ends: incremental querying (IQ, PAAL) or a fixed interval (baselines), and how
    the final phase (after the last query) trains.

    ``mode`` unset: the strategy's own schedule (PAAL and its IQ ablations: ``iq``; the baselines:
    ``fixed``, "the query interval for comparison methods is set to 5 epochs"). The run records the
    mode it used in its config.yaml.

    The final phase has a budget of its own, whatever the query rounds used: with
    ``final_epochs`` unset it trains until early stopping (``early_stop_patience``, capped by
    ``max_final_epochs``) on the global LR schedule, and its best-validation epoch is the final
    model (the paper). With ``final_epochs`` set it trains exactly that many epochs on an LR
    schedule of its own (warm-up, cosine to ``train.min_lr``) and its last epoch is the final model:
    every strategy's labelled set gets the same training, so what differs is the set alone.
    ``final_init: scratch`` also starts the final phase from fresh weights drawn from the run's seed
    (the same for every strategy of one seed and fold) instead of the last round's model."""

    mode: Literal["iq", "fixed"] | None = Field(None, description="None: the strategy's default schedule")
    iq_patience: int = 10
    iq_min_delta: float = 1e-3
    fixed_warmup: int = 10
    fixed_interval: int = 5
    early_stop_patience: int = 40
    max_epochs: int = Field(400, description="a query round ends once the run's global epoch reaches this")
    max_epochs_per_round: int | None = Field(None, description="cap on a query round's epochs (None: the trigger decides)")
    max_final_epochs: int | None = Field(
        None, description="cap on the final phase's epochs (None: early stopping decides)")
    final_epochs: int | None = Field(
        None, ge=1, description="train the final phase exactly this many epochs on its own LR schedule and "
        "keep its last epoch (None: early stopping on the global schedule, best epoch kept)")
    final_warmup_epochs: int = Field(2, ge=0, description="warm-up of the final phase's own LR schedule")
    final_lr: float | None = Field(
        None, gt=0, description="peak segmenter LR of the final phase's own schedule (None: train.lr); "
        "from scratch on a small labelled set a light model may need more than the query rounds' rate")
    final_init: Literal["continue", "scratch"] = Field(
        "continue", description="continue from the last round's model, or train the final phase from scratch")
    final_val_every: int = Field(
        1, ge=1, description="a fixed-length final phase validates every this many epochs and at its last "
        "(the last epoch is the final model whatever validation says, so the epochs between are curve "
        "points only; on 2 CPU cores a validation pass costs half a training epoch)")

    @model_validator(mode="after")
    def _final_schedule_needs_epochs(self) -> ScheduleConfig:
        if self.final_init == "scratch" and self.final_epochs is None:
            raise ValueError("schedule.final_init=scratch needs schedule.final_epochs (its own LR schedule)")
        if self.final_lr is not None and self.final_epochs is None:
            raise ValueError("schedule.final_lr needs schedule.final_epochs (its own LR schedule)")
        return self


class AugmentConfig(_Strict):
    enabled: bool = True
    elastic_p: float = 0.5
    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0
    rotations: list[float] = Field(default_factory=lambda: [-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0])
    vflip_p: float = 0.5
    salt_pepper_p: float = 0.1
    salt_pepper_amount: float = 0.01


class ModelConfig(_Strict):
    encoder: str = Field("resnet50", description="smp encoder name, or 'plain_unet' for the light CPU model")
    encoder_depth: int = 5
    base_width: int = Field(8, description="plain_unet: channels of the first level")
    decoder_dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the decoder (MC dropout)")
    ap_arch: str = "resnet18"
    ap_width: int = Field(64, ge=4, description="AP channels in the first stage (64: ResNet-18 as in the paper)")
    ap_dropout: float = 0.5
    image_size: int | None = Field(None, description="slices are resized to this on load; None: as stored")


class TrainConfig(_Strict):
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ap_lr: float = 1e-3
    ap_weight_decay: float = 1e-4
    ap_silent_epochs: int = 5
    ap_target: Literal["labelled", "validation"] = Field(
        "labelled", description="what the AP learns from: the segmenter's training-mode output on labelled "
        "batches (the paper), or, a variant beyond it, its eval-mode output on the validation slices it never "
        "trains on (targets that measure generalisation error instead of training error)")
    warmup_epochs: int = 10
    schedule_epochs: int = Field(400, description="the global cosine schedule reaches min_lr here")
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    samples_per_epoch: int | None = Field(None, description="None: one pass over the labelled set")
    mixed_precision: Literal["auto", "bf16", "fp16", "none"] = "auto"
    channels_last: bool | None = Field(
        None, description="train in channels_last memory format; None: on a GPU only (cuDNN's fast path). "
        "true also on CPU, where oneDNN trains acdc-cpu's plain U-Net 1.3x and validates it 1.7x faster; a "
        "different memory format sums in a different order, so a seed's training differs slightly")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    val_batch_size: int = 128


class ScalingSettings(_Strict):
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: int = 1
    score_actors: int = Field(1, ge=1, description="Ray Data actors that score the pool")
    score_batch_size: int = 256
    gpus_per_score_actor: float = Field(
        1.0, gt=0, le=1,
        description="GPU share of each scoring actor; below 1, several actors share a GPU so that "
        "their host-side work (Arrow decode, host-to-device copies) runs in parallel processes")
    score_calls_per_gpu_actor: int = Field(
        4, ge=1, description="work units a GPU scoring actor handles at once, in threads: while one "
        "reads Parquet and copies to pinned memory, another's batch runs on the GPU")
    compile_scoring: bool = Field(
        False, description="torch.compile the scoring models (on one H200: 7,681 instead of 4,319 "
        "slices/s at 4x256x256, after ~20 s of compiling in each actor: for large pools)")
    score_threads: int | None = Field(
        None, ge=1, description="torch threads per CPU scoring actor; None: Ray's default (its 1 CPU)")
    train_threads: int | None = Field(
        None, ge=1, description="torch threads per CPU Ray Train worker; None: Ray's default (its "
        "cpus_per_worker). More threads than reserved CPUs suits a machine where nothing else runs "
        "while a round trains (one worker on a small machine: the query work waits for training)")
    max_failures: int = Field(2, description="Ray Train worker restarts allowed per round")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources that every Ray Train worker, scoring actor "
        "and KMeans task asks for, e.g. {worker: 1} to keep the work on nodes started with --resources "
        "'{\"worker\": 8}' (off a small head)")


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray cluster address; None: RAY_ADDRESS, else local")
    num_cpus: int | None = None
    object_store_memory: int | None = Field(1_000_000_000, description="local cluster only")


class CVConfig(_Strict):
    fold: int = 0
    num_folds: int = 5

    @field_validator("num_folds")
    @classmethod
    def _at_least_two(cls, v: int) -> int:
        if v < 2:
            raise ValueError("num_folds must be at least 2")
        return v


class OracleConfig(_Strict):
    kind: Literal["simulated", "human"] = "simulated"
    inbox: str | None = Field(None, description="human oracle: folder where annotators drop masks")


class TestSetConfig(_Strict):
    """The held-out test set a run's final model is judged on (besides the validation fold, which
    drives IQ and early stopping and so is not unseen). Either a separate labelled pool of other
    patients, or patients held out of the run's own pool; never both (one run, one test set)."""

    __test__ = False  # not a pytest test class, whatever its name

    pool: str | None = Field(None, description="a labelled pool of other patients (`paal ingest`): "
                             "every slice is a test slice")
    holdout_patients: int = Field(0, ge=0, description="hold this many patients of the run's pool out "
                                  "of training, validation and selection, as the test set")
    seed: int = Field(0, description="which patients are held out: drawn from the sorted patient ids "
                      "with this seed (not the run seed, nor the fold: every run of a config holds out "
                      "the same patients)")

    @model_validator(mode="after")
    def _one_test_set(self) -> TestSetConfig:
        if self.pool and self.holdout_patients:
            raise ValueError(f"test.pool ({self.pool}) and test.holdout_patients ({self.holdout_patients}) "
                             f"are both set: a run has one test set, either a separate pool or patients "
                             f"held out of its own pool; unset one")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.pool) or self.holdout_patients > 0


class RunConfig(_Strict):
    name: str = "run"
    workspace: str = "workspace"
    pool: str = Field(..., description="pool folder written by `paal ingest`")
    seed: int = 0
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    ray: RayConfig = Field(default_factory=RayConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    test: TestSetConfig = Field(default_factory=TestSetConfig)
    log_ap_health: bool = Field(True, description="log Pearson r of AP vs actual Dice on unlabelled slices")
    reuse_round0: bool = Field(True, description="adopt round 0 from a run in the same folder that trained it "
                               "identically (same pool, initial set, seed and training config)")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the source and the field."""


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("paal_ray.presets").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict:
    src = str(source)
    if src in preset_names():
        text = resources.files("paal_ray.presets").joinpath(f"{src}.yaml").read_text()
        base_dir = None
        where = f"preset '{src}'"
    else:
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"{src}: no such config file and no such preset (presets: {', '.join(preset_names())})")
        text = path.read_text()
        base_dir = path.parent
        where = str(path)
    if where in _seen:
        raise ConfigError(f"{where}: 'extends' cycle through {' -> '.join(_seen)}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_src = str(parent)
    if base_dir is not None and parent_src not in preset_names() and not Path(parent_src).is_absolute():
        parent_src = str(base_dir / parent_src)
    return deep_merge(_read_yaml(parent_src, _seen + (where,)), data)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example budget.rounds=3")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = deep_merge({}, data)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return data


def build_config(data: dict, where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"{where}: invalid configuration\n" + "\n".join(lines)) from None


def load_config(source: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file or packaged preset, apply ``--set`` overrides, validate."""
    data = apply_overrides(_read_yaml(source), overrides)
    return build_config(data, where=str(source))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
