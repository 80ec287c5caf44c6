"""Ray job entry point for one active-learning run (or a cross-validation, or a resume).

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env deploy/runtime_env.yaml -- python jobs/run_al.py --config acdc --set pool=/data/acdc

Inside a Ray job RAY_ADDRESS is set, so the run attaches to the cluster (paal_ray.cluster.connect);
run locally without it, the run starts an embedded Ray. Exit status: 0 done (or waiting for human
annotations), 2 for a user error (bad config, missing pool), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `--working-dir .` puts the repository in the job's cwd, not on sys.path: make the package importable
# from a checkout even when the image does not have it installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file or preset name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set budget.rounds=3")
    p.add_argument("--resume", help="continue the run (or CV) in this folder")
    p.add_argument("--folds", type=int, help="cross-validation over N patient folds")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS)")
    args = p.parse_args(argv)

    from paal_ray.cli.errors import USER_ERRORS, explain, through_ray
    from paal_ray.cli.run_cmds import _user_error_types
    from paal_ray.runs.launch import launch

    known = USER_ERRORS + _user_error_types()
    print(f"paal run job: RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '(local)')}", flush=True)
    try:
        out = launch(args.config, args.overrides or None, resume=args.resume, folds=args.folds,
                     address=args.address, echo=lambda s: print(s, flush=True))
    except Exception as e:
        if not through_ray(e) and not isinstance(e, known):
            raise
        if through_ray(e):  # the job's log is the only place to look: the traceback first, the cause last
            import traceback

            traceback.print_exception(e, file=sys.stderr)
            line, user = explain(e, known)
        else:
            line, user = str(e), True
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 2 if user else 1
    status = out.get("status") if isinstance(out, dict) else out.status
    print(f"paal run job: {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
