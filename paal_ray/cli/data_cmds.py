"""CLI: `paal phantoms` and `paal ingest` (owned by the data area)."""

from __future__ import annotations

from pathlib import Path

import typer

from paal_ray.cli.errors import user_errors
from paal_ray.data.layouts import LAYOUTS, IngestError
from paal_ray.data.phantoms import PhantomError


def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise IngestError(f"{what} {text!r}: expected LOW,HIGH, for example -800,400") from None
    return lo, hi


def _size(text: str) -> int | None:
    if text.strip().lower() in ("none", "native", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise IngestError(f"--size {text!r}: expected a number of pixels or 'none'") from None


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",")] if text else None


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def register(app: typer.Typer) -> None:
    @app.command("phantoms")
    @user_errors(PhantomError)
    def phantoms(
        out: Path = typer.Argument(..., help="Folder to create (must not exist unless --overwrite)."),
        layout: str = typer.Option("msd", help="msd (dataset.json, imagesTr/, labelsTr/) or acdc "
                                   "(patientNNN/ folders, two frames each)."),
        cases: int = typer.Option(8, help="Volumes (msd) or patients (acdc, two volumes each)."),
        modalities: int = typer.Option(1, help="Channels per volume; 4-D images when more than 1."),
        classes: int = typer.Option(4, help="Classes including background (acdc: 4)."),
        size: int = typer.Option(64, help="In-plane size in pixels."),
        slices: int = typer.Option(16, help="Slices per volume."),
        seed: int = typer.Option(0, help="Same seed, same files."),
        kind: str = typer.Option("mr", help="mr (float, bias field) or ct (int16 Hounsfield units)."),
        overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    ) -> None:
        """Write a synthetic data set of 3D phantoms (nested and separate structures, noise, bias field)."""
        from paal_ray.data.phantoms import PhantomSpec, write_phantoms

        spec = PhantomSpec(cases=cases, modalities=modalities, classes=classes, size=size, slices=slices,
                           seed=seed, kind=kind)
        summary = write_phantoms(out, spec, layout=layout, overwrite=overwrite, log=_err)
        typer.echo(f"wrote {summary['volumes']} volumes ({summary['slices']} slices, {layout} layout) to "
                   f"{summary['path']}\nclasses: {', '.join(summary['class_names'])}; "
                   f"modalities: {', '.join(summary['modalities'])}")

    @app.command("ingest")
    @user_errors(IngestError)
    def ingest_cmd(
        src: Path = typer.Argument(..., help="Folder holding the data set."),
        layout: str = typer.Option(..., help=f"How SRC is organised: {', '.join(LAYOUTS)}."),
        out: Path = typer.Option(..., help="Pool folder to create (written to a temporary folder first)."),
        size: str = typer.Option("none", help="Resize slices to SIZE x SIZE pixels, or 'none' for native."),
        axis: int = typer.Option(2, help="Volume axis to slice along (0, 1 or 2)."),
        skip_bad: bool = typer.Option(False, help="Skip bad volumes (listed in the manifest) instead of failing."),
        drop_background: bool = typer.Option(False, help="Leave out slices whose image is entirely background "
                                             "(every pixel at the volume's minimum, no label); counted in the manifest."),
        workers: int | None = typer.Option(None, help="Parallel tasks; default: the cluster's CPUs."),
        window: str | None = typer.Option(None, help="CT window LOW,HIGH in HU; default: dataset.json 'window', "
                                   "the layout's (segthor -800,400), else -1000,1000."),
        percentiles: str = typer.Option("0.5,99.5", help="MR: clip to these percentiles of each volume."),
        class_names: str | None = typer.Option(None, help="Comma-separated class names, background first "
                                        "(default: the layout's, or inferred from the labels)."),
        modalities: str | None = typer.Option(None, help="Comma-separated modality names (CT is windowed, "
                                       "others percentile-normalised); default: the layout's, else MR."),
        address: str | None = typer.Option(None, help="Ray cluster address; default RAY_ADDRESS, else a local Ray."),
        overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    ) -> None:
        """Turn a folder of 3D NIfTI volumes into a pool of 2D slices (Parquet shards on Ray Data)."""
        import logging

        import ray.data  # noqa: F401  (configures its logger; quieted below)

        from paal_ray.data.ingest import IngestOptions, ingest, summarize

        options = IngestOptions(
            layout=layout, size=_size(size), axis=axis, skip_bad=skip_bad, workers=workers,
            drop_background=drop_background,
            window=_pair(window, "--window"), percentiles=_pair(percentiles, "--percentiles"),
            class_names=_names(class_names), modalities=_names(modalities),
        )
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        manifest = ingest(src, out, options, address=address, overwrite=overwrite, log=_err)
        typer.echo(summarize(manifest, out))
