"""``predict --prepare`` on scans as a scanner sends them: a phantom with a head (skull, scalp, background noise)
acquired as four thick-slice sequences, each in its own pose (``agsevnet phantom --head --clinical``), written as
DICOM series. One run serves both tests: the brain extraction with deepbet (the path of inputs with a skull, which
the skull-stripped phantoms of ``test_prepare.py`` never take) and the DICOM Segmentation that comes back."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from agsevnet import MODALITIES

pytest.importorskip("SimpleITK")
pytest.importorskip("deepbet")
pytest.importorskip("highdicom")

from prepare_helpers import back_on_atlas, dice  # noqa: E402

pytestmark = pytest.mark.slow  # one phantom, one prepare with deepbet, one prediction

# measured 2026-12-05 (shared 2-core CPU): Dice 0.973, 1593 ml for a 1581 ml brain; the whole run 35-50 s
DEEPBET_DICE = 0.95
DESCRIPTIONS = {"flair": "AX FLAIR", "t1": "AX T1 SE", "t1ce": "AX T1 POST GAD", "t2": "AX T2 TSE"}


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    from agsevnet.cli import main
    from agsevnet.prepare.dicom import write_series
    from agsevnet.synth.phantom import write_phantom_dataset

    tmp = tmp_path_factory.mktemp("head")
    write_phantom_dataset(tmp / "phantoms", 1, seed=7, head=True, clinical=True)
    cid = "Phantom_001"
    patient = tmp / "dicom" / "patient"
    for number, m in enumerate(MODALITIES, start=1):
        img = nib.load(tmp / "phantoms" / "raw" / cid / f"{cid}_{m}.nii.gz")
        write_series(img, patient / DESCRIPTIONS[m].replace(" ", "_"), series_description=DESCRIPTIONS[m],
                     series_number=number, study_uid="1.2.826.0.1.3680043.8.498.1", patient_id="PHANTOM-7")
    out = tmp / "out"
    with pytest.raises(SystemExit) as done:
        main(["predict", str(patient), "--prepare", "--out", str(out), "-q"])
    assert done.value.code in (0, None)
    return tmp, cid, patient, out


def test_deepbet_finds_the_brain_of_a_head_phantom(dicom_run) -> None:
    from agsevnet.prepare.geometry import from_list

    tmp, cid, _, out = dicom_run
    case_dir = out / "prepared" / "patient"
    record = json.loads((case_dir / "prepare.json").read_text())
    assert not record["qc"]["skull_stripped_input"]
    assert record["brain_extraction"].startswith("deepbet")
    assert {v["format"] for v in record["inputs"].values()} == {"dicom"}
    truth = np.asarray(nib.load(tmp / "phantoms" / "truth" / cid / f"{cid}_brainmask.nii.gz").dataobj) > 0
    # the phantom's files say where each voxel lies in the BraTS-grid world of its truth: an atlas point p shows
    # the truth at atlas_to_native["t1ce"] @ p
    expected = back_on_atlas(truth.astype(np.float32), from_list(record["transforms"]["atlas_to_native"]["t1ce"]))
    got = np.asarray(nib.load(case_dir / "patient_t1ce.nii.gz").dataobj) > 0
    print(json.dumps({"brain_dice": round(dice(got, expected > 0.5), 4), "volume_ml": record["qc"]["brain_volume_ml"],
                      "truth_ml": round(truth.sum() / 1000.0, 1), "seconds": record["seconds"]}))
    assert dice(got, expected > 0.5) >= DEEPBET_DICE
    assert abs(record["qc"]["brain_volume_ml"] / (truth.sum() / 1000.0) - 1) < 0.05


def test_dicom_in_seg_out_reads_back_as_the_native_label_map(dicom_run) -> None:
    from agsevnet.prepare.dicom import read_seg, read_series

    _, _, patient, out = dicom_run
    sidecar = json.loads((out / "patient.json").read_text())
    assert sidecar["native"]["dicom_seg"] == "patient_seg.dcm"
    native = nib.load(out / "patient.nii.gz")
    labels = np.asarray(native.dataobj)
    assert labels.any()
    t1ce = patient / "AX_T1_POST_GAD"
    grid = read_series(t1ce)
    assert native.shape == grid.shape
    np.testing.assert_allclose(native.affine, grid.affine, atol=1e-4)
    back = read_seg(out / "patient_seg.dcm", t1ce, convention=sidecar["labels"])
    np.testing.assert_array_equal(back, labels)
