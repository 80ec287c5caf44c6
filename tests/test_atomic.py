"""Write-then-rename: a failure never leaves a half-written file or folder behind."""

from __future__ import annotations

import pytest

from paal_ray.atomic import append_jsonl, atomic_directory, atomic_write_json, read_jsonl


def test_atomic_directory_success_and_failure(tmp_path):
    final = tmp_path / "pool"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "x"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(final):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "other") as tmp:
            (tmp / "half").write_text("y")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]  # no temp folder left


def test_atomic_directory_overwrite_replaces_whole(tmp_path):
    final = tmp_path / "d"
    with atomic_directory(final) as tmp:
        (tmp / "old").write_text("1")
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_json_write_keeps_old_on_error(tmp_path):
    f = tmp_path / "state.json"
    atomic_write_json(f, {"round": 1})
    with pytest.raises(TypeError):
        atomic_write_json(f, {"round": object.__new__(type("X", (), {"__str__": None}))})
    assert f.read_text().strip().startswith("{") and '"round": 1' in f.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_jsonl_skips_a_torn_last_line(tmp_path):
    f = tmp_path / "m.jsonl"
    append_jsonl(f, {"a": 1})
    append_jsonl(f, {"a": 2})
    with open(f, "a") as fh:
        fh.write('{"a": 3')  # killed mid-write
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}]


def test_append_after_a_torn_last_line_loses_no_record(tmp_path):
    f = tmp_path / "m.jsonl"
    append_jsonl(f, {"a": 1})
    with open(f, "a") as fh:
        fh.write('{"a": 2, "tor')  # a process killed mid-write
    append_jsonl(f, {"a": 3})
    append_jsonl(f, {"a": 4})
    assert read_jsonl(f) == [{"a": 1}, {"a": 3}, {"a": 4}]
    assert f.read_text().count("\n") == 4  # the torn fragment kept on a line of its own


def test_append_to_an_empty_file_adds_no_blank_line(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text("")
    append_jsonl(f, {"a": 1})
    assert f.read_text() == '{"a": 1}\n'
