"""``paal``: active learning for medical image segmentation on Ray.

Commands are defined next to the area they drive (``cli/data_cmds.py``, ``cli/run_cmds.py``, ...)
and registered here; this module only assembles the app. Errors the user can fix (bad input,
bad config) are printed as one clear message with exit status 2, without a traceback.
"""

from __future__ import annotations

import typer

from paal_ray import __version__
from paal_ray.cli import data_cmds, eval_cmds, run_cmds, serve_cmds, sweep_cmds, use_cmds

app = typer.Typer(
    name="paal",
    help="PAAL active learning for medical image segmentation, on a local Ray or a Ray cluster "
    "(set RAY_ADDRESS or --address).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"paal-ray {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


for _module in (data_cmds, run_cmds, eval_cmds, use_cmds, serve_cmds, sweep_cmds):
    _module.register(app)


if __name__ == "__main__":
    app()
