"""Ray job entry point for `paal ingest`: the same options, run on a Ray cluster.

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env deploy/runtime_env.yaml -- \\
        python jobs/ingest.py /data/acdc --layout acdc --out /data/pools/acdc --size 256

Inside a Ray job RAY_ADDRESS is set, so the ingest attaches to the cluster (paal_ray.cluster.connect)
and its read/slice/write tasks run on the cluster's workers: SRC and --out must be on storage that
every node sees (a shared file system). Run without RAY_ADDRESS, it starts an embedded local Ray.
Exit status: 0 done, 2 bad input (the message names the file), 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `--working-dir .` puts the repository in the job's cwd, not on sys.path: make the package importable
# from a checkout even when the image does not have it installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    from paal_ray.cli.main import app

    app(["ingest", *(sys.argv[1:] if argv is None else argv)], prog_name="jobs/ingest.py")


if __name__ == "__main__":
    main()
