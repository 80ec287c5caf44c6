"""CLI: `paal predict` and `paal export` (using what a run produced: its model and its labels)."""

from __future__ import annotations

from pathlib import Path

import typer

from paal_ray.cli.errors import user_errors
from paal_ray.data.layouts import LAYOUTS, IngestError


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _errors() -> tuple[type[BaseException], ...]:
    from paal_ray.inference.predict import PredictError
    from paal_ray.runs.export import ExportError
    from paal_ray.runs.oracle import MaskError
    from paal_ray.runs.state import RunStateError

    return (PredictError, ExportError, IngestError, RunStateError, MaskError)


def predict(
    run: Path = typer.Argument(..., help="Run folder (WORKSPACE/NAME) whose model predicts."),
    input: Path = typer.Argument(..., help="A NIfTI file, a folder of NIfTI files, or (with --layout) a data set."),
    out: Path = typer.Option(..., "--out", help="Folder to create: one mask NIfTI per volume, sidecars, predict.json."),
    layout: str | None = typer.Option(None, "--layout", help=f"INPUT is a data set in this ingest layout: "
                                      f"{', '.join(LAYOUTS)} (labels are not needed; MSD's imagesTs are included)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Use this checkpoint folder (or model.pt) "
                                           "instead of the run's final model."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write CASE_probabilities.nii.gz "
                                       "(float32, one volume per class)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad volumes (listed in predict.json) instead of "
                                  "failing."),
    gpu: bool | None = typer.Option(None, "--gpu/--cpu", help="Predict on GPUs (one per actor); default: the "
                                    "run's scaling.use_gpu."),
    actors: int | None = typer.Option(None, "--actors", help="Prediction actors; default: the cluster's CPUs "
                                      "(CPU) or GPUs (GPU)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Slices per forward pass; default: the "
                                          "run's scaling.score_batch_size."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads per CPU actor (default 1)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address; default RAY_ADDRESS, else a "
                                       "local Ray."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Segment new volumes with a run's model: one uint8 mask per volume on the input's exact grid.

    Volumes are read, checked and preprocessed as `paal ingest` did for the run's pool (modalities,
    normalisation, slice axis, size); class probabilities are resized back to the native grid
    before the argmax. Runs on a Ray Data actor pool, a volume at a time per actor.
    """
    from paal_ray.inference.predict import PredictOptions, run_model
    from paal_ray.inference.predict import predict as run_predict

    def _go() -> None:
        model, cfg = run_model(run, checkpoint)
        sc = cfg.scaling
        use_gpu = sc.use_gpu if gpu is None else gpu
        options = PredictOptions(probabilities=probabilities, skip_bad=skip_bad, use_gpu=use_gpu,
                                 actors=actors or (sc.score_actors if use_gpu else None),
                                 batch_size=batch_size or sc.score_batch_size, threads=threads,
                                 gpus_per_actor=sc.gpus_per_score_actor)
        summary = run_predict(input, out, model, options, layout=layout, address=address, overwrite=overwrite,
                              log=_err)
        typer.echo(f"{summary['num_volumes']} masks in {out} ({summary['num_slices']} slices, "
                   f"{summary['volumes_per_s']:.2f} volumes/s); classes: "
                   + ", ".join(f"{k}={n}" for k, n in summary["labels"].items())
                   + (f"; skipped {len(summary['skipped'])}: see {out}/predict.json" if summary["skipped"] else ""))

    user_errors(*_errors())(_go)()


def export(
    run: Path = typer.Argument(..., help="Run folder (WORKSPACE/NAME) whose labelled slices to export."),
    format: str = typer.Option("nnunet", "--format", help="nnunet (nnU-Net v2 raw dataset) or nifti "
                               "(images/ and labels/)."),
    out: Path = typer.Option(..., "--out", help="nnunet: the nnUNet_raw folder (DatasetNNN_Name/ is created in "
                             "it); nifti: the folder to create."),
    dataset_id: int = typer.Option(500, "--dataset-id", help="nnunet: the dataset number NNN (1-999)."),
    name: str | None = typer.Option(None, "--name", help="nnunet: the dataset name (default: the run's name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the dataset folder if it exists."),
) -> None:
    """Export a run's labelled slices (initial set + every round's labels) with their images.

    nnunet: DatasetNNN_Name/imagesTr/{case}_{slice}_0000.nii.gz (one file per channel), labelsTr/,
    dataset.json; ready for nnUNetv2_plan_and_preprocess. paal_export.json records the run, round
    and source commit, and which pool slice each case is.
    """
    from paal_ray.runs.export import export_run

    def _go() -> None:
        target = export_run(run, out, format, dataset_id=dataset_id, name=name, overwrite=overwrite, log=_err)
        typer.echo(f"exported to {target}")

    user_errors(*_errors())(_go)()


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("export")(export)
