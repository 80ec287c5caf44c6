"""`paal phantoms` and `paal ingest` from the command line: output, exit status, clean errors."""

from pathlib import Path

from typer.testing import CliRunner

from paal_ray.cli.main import app
from paal_ray.data.pool import Pool


def test_phantoms_then_ingest_then_bad_input(ray_session, tmp_path):
    runner = CliRunner()
    src, pool = tmp_path / "src", tmp_path / "pool"
    r = runner.invoke(app, ["phantoms", str(src), "--cases", "2", "--size", "16", "--slices", "5",
                            "--modalities", "2", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "wrote 2 volumes (10 slices, msd layout)" in r.output

    r = runner.invoke(app, ["ingest", str(src), "--layout", "msd", "--out", str(pool), "--size", "8"])
    assert r.exit_code == 0, r.output
    assert "2 patients, 2 volumes, 10 slices" in r.output and "lesion" in r.output
    assert Pool.open(pool).manifest["image_size"] == 8

    r = runner.invoke(app, ["ingest", str(src), "--layout", "msd", "--out", str(pool)])
    assert r.exit_code == 2 and "already exists" in r.output

    (src / "labelsTr" / "phantom_001.nii.gz").unlink()
    r = runner.invoke(app, ["ingest", str(src), "--layout", "msd", "--out", str(tmp_path / "p2")])
    assert r.exit_code == 2 and "error:" in r.output and "phantom_001.nii.gz: missing label" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "p2").exists()

    r = runner.invoke(app, ["ingest", str(src), "--layout", "msd", "--out", str(tmp_path / "p3"), "--skip-bad"])
    assert r.exit_code == 0 and "skipped" in r.output and "phantom_001.nii.gz" in r.output


def test_bad_options_are_clear_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(tmp_path), "--layout", "nifty", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "unknown layout 'nifty'" in r.output
    r = runner.invoke(app, ["ingest", str(tmp_path), "--layout", "msd", "--out", str(tmp_path / "p"),
                            "--size", "big"])
    assert r.exit_code == 2 and "--size 'big'" in r.output
    r = runner.invoke(app, ["phantoms", str(tmp_path / "x"), "--classes", "1"])
    assert r.exit_code == 2 and "classes" in r.output


def test_ray_job_entry_point_runs_the_ingest(ray_session, tmp_path):
    import importlib.util

    import pytest

    from paal_ray.data.phantoms import PhantomSpec, write_phantoms

    spec = importlib.util.spec_from_file_location("jobs_ingest", Path(__file__).parents[2] / "jobs" / "ingest.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    write_phantoms(tmp_path / "src", PhantomSpec(cases=2, size=16, slices=4), layout="acdc")
    with pytest.raises(SystemExit) as done:
        job.main([str(tmp_path / "src"), "--layout", "acdc", "--out", str(tmp_path / "pool")])
    assert done.value.code in (0, None)
    assert Pool.open(tmp_path / "pool").manifest["num_volumes"] == 4
    with pytest.raises(SystemExit) as failed:
        job.main([str(tmp_path / "missing"), "--layout", "acdc", "--out", str(tmp_path / "p2")])
    assert failed.value.code == 2
