"""Scoring without Ray: reading row groups, decoding, every score key, MC dropout, BADGE, LPL."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from paal_ray.data.pool import SLICE_SCHEMA, decode_images, encode_slice_row
from paal_ray.models import ModelSpec, load_model_bundle, save_model_bundle
from paal_ray.models.loss_prediction import LossPredictionHead
from paal_ray.query.scoring import ScoreComputer, ScoreOptions, ScoringError, fixed_arrays

C, K, S = 2, 3, 32


def _table(n=6, seed=0, size=S):
    rng = np.random.default_rng(seed)
    rows = [encode_slice_row(case_id="c", patient_id="c", slice_index=i,
                             image=rng.random((C, size, size)).astype(np.float16),
                             label=rng.integers(0, K, (size, size)), num_classes=K) for i in range(n)]
    return pa.Table.from_pylist(rows, schema=SLICE_SCHEMA)


def _bundle(tmp_path, dropout=0.0, lpl=False):
    torch.manual_seed(0)
    spec = ModelSpec(in_channels=C, num_classes=K, encoder="plain_unet", encoder_depth=2, base_width=4,
                     decoder_dropout=dropout, ap_arch="resnet18")
    seg, ap = spec.build()
    with torch.no_grad():  # a fresh init gives near-zero logits; scale up so outputs vary visibly
        for m in seg.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.mul_(3)
    ext = {}
    if lpl:
        head = LossPredictionHead(seg.stage_channels, hidden=8)
        ext["lpl"] = {"state_dict": head.state_dict(), "hidden": 8}
    folder = tmp_path / f"b{dropout}{lpl}"
    save_model_bundle(folder, spec, seg, ap, extensions=ext)
    return folder


def test_fixed_arrays_is_a_zero_copy_view_matching_decode_images():
    t = _table()
    arr = fixed_arrays(t, "image", "image_dtype", "image_shape")
    assert arr.dtype == np.float16 and arr.shape == (6, C, S, S)
    data_buffer = np.frombuffer(t.column("image").chunks[0].buffers()[2], np.uint8)
    assert np.shares_memory(arr, data_buffer)  # a view on the Arrow buffer, not a copy
    np.testing.assert_array_equal(arr.astype(np.float32), decode_images(t.to_pydict()))
    sliced = t.slice(2, 3)  # offsets into a shared buffer
    np.testing.assert_array_equal(fixed_arrays(sliced, "image", "image_dtype", "image_shape"), arr[2:5])
    two_chunks = pa.concat_tables([t.slice(0, 2), t.slice(2)])
    np.testing.assert_array_equal(fixed_arrays(two_chunks, "image", "image_dtype", "image_shape"), arr)
    parts = fixed_arrays(two_chunks, "image", "image_dtype", "image_shape", as_chunks=True)
    assert [len(p) for p in parts] == [2, 4]


def test_fixed_arrays_names_the_problem():
    t = pa.concat_tables([_table(2), _table(2, size=16)])
    with pytest.raises(ScoringError, match="different shapes"):
        fixed_arrays(t, "image", "image_dtype", "image_shape")
    rows = _table(2).to_pylist()
    rows[1].update(label=None, label_dtype="uint8", label_shape=[S, S])
    with pytest.raises(ScoringError, match="null"):
        fixed_arrays(pa.Table.from_pylist(rows, schema=SLICE_SCHEMA), "label", "label_dtype", "label_shape")


def test_every_deterministic_score_has_the_right_shape_and_range(tmp_path):
    needs = frozenset({"probs_mean", "pixel_entropy", "pixel_least_conf", "pixel_margin", "features",
                       "pred_acc", "grad_embedding", "true_dice", "lpl_loss"})
    comp = ScoreComputer(load_model_bundle(_bundle(tmp_path, lpl=True)), ScoreOptions(needs=needs, image_size=24))
    t = _table()
    img = fixed_arrays(t, "image", "image_dtype", "image_shape")
    lab = fixed_arrays(t, "label", "label_dtype", "label_shape")
    out = comp.score(img, t.column("slice_id").to_pylist(), lab)
    assert set(out) == needs
    np.testing.assert_allclose(out["probs_mean"].sum(1), 1.0, atol=1e-5)
    assert out["features"].shape == (6, 4 * 2**2) and out["pred_acc"].shape == (6, K)
    assert out["grad_embedding"].shape == (6, K * 4) and out["true_dice"].shape == (6, K)
    assert ((out["pixel_entropy"] >= 0) & (out["pixel_entropy"] <= np.log(K) + 1e-6)).all()
    assert ((out["pixel_margin"] >= 0) & (out["pixel_margin"] <= 1)).all()
    assert out["lpl_loss"].shape == (6,)
    again = comp.score([img[:2], img[2:]], t.column("slice_id").to_pylist(), lab)  # chunks: same result
    for k in needs:
        np.testing.assert_allclose(out[k], again[k], rtol=1e-5, atol=1e-6)


def test_grad_embedding_is_the_true_last_layer_gradient(tmp_path):
    bundle = load_model_bundle(_bundle(tmp_path))
    comp = ScoreComputer(bundle, ScoreOptions(needs=frozenset({"grad_embedding"})))
    img = fixed_arrays(_table(1), "image", "image_dtype", "image_shape")
    emb = comp.score(img, ["c/0000"])["grad_embedding"][0]
    seg = load_model_bundle(_bundle(tmp_path)).segmenter.eval()
    x = torch.from_numpy(img.astype(np.float32))
    logits = seg(x)
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))  # mean over pixels
    (grad,) = torch.autograd.grad(loss, seg.net.segmentation_head.weight)
    np.testing.assert_allclose(emb, grad.reshape(-1).numpy(), rtol=1e-4, atol=1e-6)


def test_lpl_score_is_the_stored_head(tmp_path):
    folder = _bundle(tmp_path, lpl=True)
    bundle = load_model_bundle(folder)
    comp = ScoreComputer(bundle, ScoreOptions(needs=frozenset({"lpl_loss"})))
    img = fixed_arrays(_table(3), "image", "image_dtype", "image_shape")
    got = comp.score(img, ["a", "b", "c"])["lpl_loss"]
    ref = load_model_bundle(folder)
    head = LossPredictionHead(ref.segmenter.stage_channels, hidden=8)
    head.load_state_dict(ref.extensions["lpl"]["state_dict"])
    with torch.no_grad():
        want = head(ref.segmenter.eval().forward_features(torch.from_numpy(img.astype(np.float32))).stages)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ScoringError, match="no 'lpl' extension"):
        ScoreComputer(load_model_bundle(_bundle(tmp_path)), ScoreOptions(needs=frozenset({"lpl_loss"})))


def test_mc_dropout_passes_differ_repeat_for_a_seed_and_ignore_batching(tmp_path):
    folder = _bundle(tmp_path, dropout=0.5)
    opts = ScoreOptions(needs=frozenset({"mc_probs", "bald_pixel"}), mc_passes=4, seed=7)
    comp = ScoreComputer(load_model_bundle(folder), opts)
    assert comp.seg.feature_dropout.training and not comp.seg.net.encoder.training  # only dropout active
    t = _table(4)
    img = fixed_arrays(t, "image", "image_dtype", "image_shape")
    ids = t.column("slice_id").to_pylist()
    out = comp.score(img, ids)
    mc = out["mc_probs"]
    assert mc.shape == (4, 4, K)
    for i in range(4):  # the T passes of one slice are not all the same
        assert np.abs(mc[i] - mc[i, :1]).max() > 1e-4
    assert (out["bald_pixel"] > 0).all()
    np.testing.assert_allclose(comp.score(img, ids)["mc_probs"], mc, atol=1e-6)
    np.testing.assert_allclose(comp.score(img[2:3], ids[2:3])["mc_probs"][0], mc[2], atol=1e-5)
    other = ScoreComputer(load_model_bundle(folder), ScoreOptions(needs=opts.needs, mc_passes=4, seed=8))
    assert np.abs(other.score(img, ids)["mc_probs"] - mc).max() > 1e-4
    # the plain forward pass is untouched by the MC hook
    det = ScoreComputer(load_model_bundle(folder), ScoreOptions(needs=frozenset({"probs_mean"})))
    a, b = det.score(img, ids)["probs_mean"], det.score(img, ids)["probs_mean"]
    np.testing.assert_array_equal(a, b)


def test_the_deterministic_pass_of_an_mc_dropout_scorer_runs_with_dropout_off(tmp_path):
    """The MC scorer keeps its dropout module in train mode; with no MC mask set its hook must hand
    the input through unchanged, or probs and features would be drawn with dropout active."""
    folder = _bundle(tmp_path, dropout=0.5)
    needs = frozenset({"probs_mean", "features", "pixel_entropy", "mc_probs"})
    comp = ScoreComputer(load_model_bundle(folder), ScoreOptions(needs=needs, mc_passes=2, seed=1))
    assert comp.seg.feature_dropout.training
    t = _table(4)
    img = fixed_arrays(t, "image", "image_dtype", "image_shape")
    ids = t.column("slice_id").to_pylist()
    torch.manual_seed(0)
    a = comp.score(img, ids)
    torch.manual_seed(1)  # another global draw: a dropout left on would give other outputs
    b = comp.score(img, ids)
    for key in ("probs_mean", "features", "pixel_entropy"):
        np.testing.assert_array_equal(a[key], b[key])
    # and it is the eval-mode model's output: the same as a scorer without the MC hook
    plain = ScoreComputer(load_model_bundle(folder), ScoreOptions(needs=frozenset({"probs_mean"})))
    np.testing.assert_allclose(plain.score(img, ids)["probs_mean"], a["probs_mean"], atol=1e-6)


def test_mc_dropout_refuses_a_model_without_dropout(tmp_path):
    with pytest.raises(ScoringError, match="decoder_dropout > 0"):
        ScoreComputer(load_model_bundle(_bundle(tmp_path)), ScoreOptions(needs=frozenset({"mc_probs"})))


def test_score_actor_sets_its_torch_threads_in_the_thread_that_scores(tmp_path, monkeypatch):
    """Ray calls actor methods in another thread than the constructor's, and OpenMP's thread count
    is per thread: the actor must apply score_threads where it scores, once per thread."""
    import threading

    from paal_ray.query.scoring import ScoreActor, work_units

    pool = _pool_of_row_groups(tmp_path / "pool", groups=((0, 6),), files=1)
    batch = {"unit": np.asarray(work_units(pool.locate(pool.slice_ids()), 6), dtype=object)}
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append((threading.get_ident(), n)))
    actor = ScoreActor(str(_bundle(tmp_path)), ScoreOptions(needs=frozenset({"pred_acc"})), threads=3)
    results = []

    def score_twice():
        results.append(actor(batch))
        results.append(actor(batch))
        results.append(threading.get_ident())

    worker = threading.Thread(target=score_twice)
    worker.start()
    worker.join()
    assert calls == [(results[2], 3)]  # in the scoring thread, not repeated on its second batch
    assert results[0]["pred_acc"].shape == (6, K)


def _pool_of_row_groups(tmp_path, groups=((0, 5), (5, 9)), files=2):
    """``files`` Parquet files of the rows of _table(), each written as row groups of the given
    row ranges (a file per volume, a group per few slices: what readers must cope with)."""
    import pyarrow.parquet as pq

    from paal_ray.data.pool import MANIFEST, SLICES_DIR, Pool

    (tmp_path / SLICES_DIR).mkdir(parents=True)
    for f in range(files):
        t = _table(groups[-1][1], seed=f)
        t = t.set_column(0, "slice_id", pa.array([f"f{f}/{i:04d}" for i in range(t.num_rows)]))
        with pq.ParquetWriter(str(tmp_path / SLICES_DIR / f"part-{f}.parquet"), SLICE_SCHEMA) as w:
            for lo, hi in groups:
                w.write_table(t.slice(lo, hi - lo))
    (tmp_path / MANIFEST).write_text('{"class_names": ["a", "b", "c"], "channels": 2, "image_size": 32}')
    return Pool.open(tmp_path)


def test_locate_and_read_rows_return_exactly_the_asked_slices(tmp_path):
    from paal_ray.data.pool import PoolError, read_rows

    pool = _pool_of_row_groups(tmp_path)
    ids = pool.slice_ids()
    want = [s for i, s in enumerate(ids) if i % 3 != 1]  # runs and gaps inside row groups
    parts = pool.locate(want)
    assert [(p.path.rsplit("/", 1)[1], p.row_group) for p in parts] == [
        ("part-0.parquet", 0), ("part-0.parquet", 1), ("part-1.parquet", 0), ("part-1.parquet", 1)]
    table = read_rows(parts, ["slice_id", "image", "image_dtype", "image_shape"])
    assert sorted(table.column("slice_id").to_pylist()) == sorted(want)
    # the images read are the stored ones, row for row
    ref = pool.read_slices(table.column("slice_id").to_pylist())
    np.testing.assert_array_equal(fixed_arrays(table, "image", "image_dtype", "image_shape"),
                                  fixed_arrays(ref, "image", "image_dtype", "image_shape"))
    with pytest.raises(PoolError, match=r"1 requested slices are not in the pool, e.g. \['nope/0001'\]"):
        pool.locate([*want, "nope/0001"])


def test_locate_refuses_a_pool_that_stores_a_slice_twice(tmp_path):
    import shutil

    from paal_ray.data.pool import PoolError

    pool = _pool_of_row_groups(tmp_path, files=1)
    shutil.copy(pool.files[0], tmp_path / "slices" / "part-copy.parquet")
    with pytest.raises(PoolError, match=r"stored more than once: \['f0/0000'\]"):
        pool.locate(["f0/0000"])


def test_work_units_pack_small_row_groups_into_full_batches():
    from paal_ray.data.pool import RowGroupRows
    from paal_ray.query.scoring import work_units

    parts = [RowGroupRows("a", g, tuple(range(n))) for g, n in enumerate([3, 3, 3, 10, 1])]
    units = [json.loads(u) for u in work_units(parts, 5)]
    assert [[p[1] for p in u] for u in units] == [[0, 1], [2, 3], [4]]
    assert sum(len(p[2]) for u in units for p in u) == 20


def test_score_actor_scores_units_across_row_groups_in_fixed_batches(tmp_path, monkeypatch):
    """A unit spanning row groups and files is scored in batches of batch_size, across group
    boundaries, with the same scores as the model on the same slices in one batch."""
    from paal_ray.data.pool import read_rows
    from paal_ray.query.scoring import ScoreActor, work_units

    pool = _pool_of_row_groups(tmp_path)
    ids = pool.slice_ids()
    want = [s for i, s in enumerate(ids) if i % 4 != 0]
    units = work_units(pool.locate(want), 100)
    assert len(units) == 1
    needs = frozenset({"pred_acc", "features", "true_dice"})
    actor = ScoreActor(str(_bundle(tmp_path / "m")), ScoreOptions(needs=needs), batch_size=4)
    sizes = []
    real = actor.computer.score
    monkeypatch.setattr(actor.computer, "score", lambda im, i, lab=None: sizes.append(len(i)) or real(im, i, lab))
    out = actor({"unit": np.asarray(units, dtype=object)})
    assert sizes == [4, 4, 4, 1] and sorted(out["slice_id"]) == sorted(want)
    table = read_rows(pool.locate(want), ["slice_id", "image", "image_dtype", "image_shape",
                                          "label", "label_dtype", "label_shape"])
    ref = real(fixed_arrays(table, "image", "image_dtype", "image_shape"), table.column("slice_id").to_pylist(),
               fixed_arrays(table, "label", "label_dtype", "label_shape"))
    order = {s: i for i, s in enumerate(table.column("slice_id").to_pylist())}
    rows = [order[s] for s in out["slice_id"]]
    for k in needs:
        np.testing.assert_allclose(out[k], ref[k][rows], rtol=1e-4, atol=1e-5)


def test_compiled_scoring_matches_eager_pads_partial_batches_and_compiles_once(tmp_path):
    """compile_batch: one graph for batches of exactly that size (a partial batch is zero-padded and
    cut back), the same scores as eager, and two threads scoring at once compile it once."""
    import threading

    torch._dynamo.utils.counters.clear()
    folder = _bundle(tmp_path)
    needs = frozenset({"pred_acc", "features", "pixel_entropy"})
    eager = ScoreComputer(load_model_bundle(folder), ScoreOptions(needs=needs))
    compiled = ScoreComputer(load_model_bundle(folder), ScoreOptions(needs=needs, compile_batch=4))
    traced = []
    real = compiled._compiled
    compiled._compiled = lambda x: traced.append(x.shape[0]) or real(x)
    t = _table(6)
    img = fixed_arrays(t, "image", "image_dtype", "image_shape")
    ids = t.column("slice_id").to_pylist()
    results = {}
    threads = [threading.Thread(target=lambda k=k, sl=sl: results.__setitem__(k, compiled.score(img[sl], ids[sl])))
               for k, sl in (("a", slice(0, 6)), ("b", slice(1, 4)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert traced and set(traced) == {4}  # every call at the compiled size: 6 -> 4 + 2 padded; 3 -> padded
    want = eager.score(img, ids)
    for k in needs:
        np.testing.assert_allclose(results["a"][k], want[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(results["b"][k], want[k][1:4], rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_compile_falls_back_to_eager_for_scores_it_cannot_take(tmp_path, caplog):
    needs = frozenset({"pred_acc", "grad_embedding"})
    comp = ScoreComputer(load_model_bundle(_bundle(tmp_path)), ScoreOptions(needs=needs, compile_batch=4))
    assert comp._compiled is None and "computed eagerly" in caplog.text
    out = comp.score(fixed_arrays(_table(2), "image", "image_dtype", "image_shape"), ["a", "b"])
    assert out["grad_embedding"].shape == (2, K * 4)
