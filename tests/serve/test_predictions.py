"""Pre-annotations: a human-oracle run writes the current model's mask beside each exported slice,
the service serves it, and the selection listing says which slices have one and the AP's guess."""

from __future__ import annotations

import gzip
import io
import json

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeQuery, FakeTrainer, fake_strategy, small_cfg
from fastapi.testclient import TestClient
from PIL import Image

from paal_ray.runs.machine import RunMachine, Services
from paal_ray.runs.oracle import prediction_names, safe_name
from paal_ray.serve.app import create_app


class BundleTrainer(FakeTrainer):
    """The fake trainer, but its checkpoint holds a real (untrained) model bundle of the CPU
    preset's models: 64 px input, so masks of the 32 px slices go through the resize both ways."""

    def __call__(self, spec):
        from paal_ray.models.bundle import ModelSpec, save_model_bundle

        result = super().__call__(spec)
        model = ModelSpec.from_config(spec.config.model, spec.in_channels, spec.num_classes)
        seg, ap = model.build()
        save_model_bundle(result.checkpoint, model, seg, ap)
        return result


class APQuery(FakeQuery):
    """The fake query, plus the AP's predicted Dice per class in the table (as PAAL writes it)."""

    def __call__(self, req):
        result = super().__call__(req)
        table = pq.read_table(req.out_path)
        acc = np.linspace(0.1, 0.9, table.num_rows * 3, dtype=np.float32)
        pq.write_table(table.append_column("pred_acc", pa.FixedSizeListArray.from_arrays(pa.array(acc), 3)),
                       req.out_path)
        return result


@pytest.fixture()
def workspace(blob_pool, tmp_path):
    ws = tmp_path / "ws"
    human = RunMachine.create(small_cfg(blob_pool, ws, **{"name": "human", "oracle.kind": "human"}),
                              services=Services(train=BundleTrainer(), query=APQuery(), strategy=fake_strategy),
                              echo=lambda s: None)
    assert human.run().status == "waiting"
    sim = Services(train=BundleTrainer(), query=FakeQuery(), strategy=fake_strategy)
    RunMachine.create(small_cfg(blob_pool, ws, name="sim"), services=sim, echo=lambda s: None).run()
    return ws


def test_human_run_writes_pre_annotations_beside_the_images(workspace):
    from paal_ray.inference.predictor import SlicePredictor
    from paal_ray.runs.state import RunPaths, RunState

    export = workspace / "human" / "rounds" / "000" / "annotate"
    manifest = json.loads((export / "manifest.json").read_text())
    state = RunState.load(RunPaths(workspace / "human"))
    assert manifest["prediction"] == {"checkpoint": state.checkpoint}
    predictor = SlicePredictor.load(state.checkpoint)
    assert len(manifest["slices"]) == 6
    for entry in manifest["slices"]:
        names = prediction_names(entry["slice_id"])
        assert entry["prediction_png"] == names["png"] and entry["prediction_nifti"] == names["nii.gz"]
        png = np.asarray(Image.open(export / names["png"]))
        nii = nib.load(str(export / names["nii.gz"]))
        image = nib.load(str(export / f"{safe_name(entry['slice_id'])}.nii.gz"))
        assert png.shape == (32, 32) == nii.shape == image.shape[:2] and nii.get_data_dtype() == np.uint8
        assert np.allclose(nii.affine, image.affine) and np.array_equal(np.asarray(nii.dataobj), png)
        assert set(np.unique(png).tolist()) <= {0, 1, 2}
        # The mask is the model's own answer on the slice's grid (the model runs at 64 px).
        slice_ = np.transpose(np.asarray(image.dataobj), (2, 0, 1))
        expected = predictor.predict(slice_[None].astype(np.float16).astype(np.float32), (32, 32))[0][0]
        assert np.array_equal(png, expected)
    assert "copy it into the inbox" in manifest["instructions"]


def test_pre_annotations_are_served_and_listed(workspace):
    client = TestClient(create_app(str(workspace)))
    sel = client.get("/runs/human/selection").json()
    assert all(s["has_prediction"] for s in sel["slices"])
    assert all(len(s["pred_dice"]) == 3 and 0 <= min(s["pred_dice"]) for s in sel["slices"])
    assert sel["slices"][0]["pred_dice"] == pytest.approx([0.1, 0.1 + 0.8 / 17, 0.1 + 1.6 / 17], abs=1e-6)
    sim = client.get("/runs/sim/selection?round=0").json()
    assert not any(s["has_prediction"] for s in sim["slices"]) and all(s["pred_dice"] is None for s in sim["slices"])

    export = workspace / "human" / "rounds" / "000" / "annotate"
    sid = sel["slices"][0]["slice_id"]
    png = client.get(f"/runs/human/predictions/{sid}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == (export / prediction_names(sid)["png"]).read_bytes()
    nii = client.get(f"/runs/human/predictions/{sid}?format=nii.gz")
    assert nii.status_code == 200
    assert nib.Nifti1Image.from_bytes(gzip.decompress(nii.content)).shape == (32, 32)
    for url, status, words in [
        (f"/runs/sim/predictions/{sim['slices'][0]['slice_id']}", 404, "no predicted mask in round 0"),
        ("/runs/human/predictions/case999/0000", 404, "not selected in any round"),
        (f"/runs/human/predictions/{sid}?format=jpg", 422, "png"),  # the format enum lists what is served
    ]:
        r = client.get(url)
        assert r.status_code == status and words in str(r.json()["detail"]), (url, r.status_code, r.text)
    # An annotator can send the guess straight back as the slice's mask (after correcting it).
    mask = np.asarray(Image.open(io.BytesIO(png.content)))
    r = client.put(f"/runs/human/masks/{sid}?format=png", content=png.content)
    assert r.status_code == 200 and r.json()["classes_present"] == sorted(np.unique(mask).tolist())
