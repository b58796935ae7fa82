"""``agsevnet prepare`` and ``predict --prepare`` on synthetic clinical acquisitions (issue 16).

A phantom (skull-stripped, on the BraTS grid) is recorded as four thick-slice sequences, each with the patient in
its own rigid pose; prepare must bring them back together: the brain mask on the BraTS grid is the phantom's,
seen through the atlas transform prepare found (Dice >= 0.95), and the four sequences agree with each other.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from agsevnet import MODALITIES

pytest.importorskip("SimpleITK")

# one prepare of a full-size phantom (about 25 s on the shared 2-core CPU) serves the module
pytestmark = pytest.mark.slow

from prepare_helpers import acquire, back_on_atlas, brain_centre_lps, dice, random_pose  # noqa: E402


def _write_clinical(tmp_path, images: np.ndarray, seed: int, max_deg: float = 12.0, max_mm: float = 15.0):
    rng = np.random.default_rng(seed)
    mask = images.max(axis=0) > 0
    centre = brain_centre_lps(mask)
    folder = tmp_path / "patient"
    folder.mkdir()
    poses, names = {}, {"flair": "AX_FLAIR", "t1": "AX_T1_SE", "t1ce": "AX_T1_POST_GAD", "t2": "AX_T2_TSE"}
    for c, m in enumerate(MODALITIES):
        pose = random_pose(rng, max_deg, max_mm, centre)
        acq = acquire(images[c], pose, centre + rng.uniform(-10, 10, 3))
        nib.save(nib.Nifti1Image(np.round(acq.data).astype(np.int16), acq.affine), folder / f"{names[m]}.nii.gz")
        poses[m] = pose
    return folder, poses, mask


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    from agsevnet.synth.phantom import make_phantom

    tmp = tmp_path_factory.mktemp("clinical")
    images, labels = make_phantom(3)
    folder, poses, mask = _write_clinical(tmp, images, seed=5)
    from agsevnet.prepare.pipeline import prepare

    prepared = prepare(folder, tmp / "prepared")
    return tmp, folder, poses, mask, labels, prepared


def test_prepare_round_trip_on_a_moved_thick_slice_phantom(phantom_case) -> None:
    from agsevnet.data.checks import check_dataset
    from agsevnet.prepare.geometry import from_list

    tmp, folder, poses, mask, labels, prepared = phantom_case
    record = prepared.record
    case_dir = prepared.case_dir
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(
        [f"patient_{m}.nii.gz" for m in MODALITIES] + ["prepare.json", "prepare.png"])
    out = {m: nib.load(case_dir / f"patient_{m}.nii.gz") for m in MODALITIES}
    from agsevnet.prepare.atlas import BRATS_AFFINE

    for img in out.values():
        assert img.shape == (240, 240, 155)
        np.testing.assert_allclose(img.affine, BRATS_AFFINE)
    reports = check_dataset(tmp / "prepared")
    assert len(reports) == 1 and not reports[0].problems, reports[0].problems
    # Truth: an atlas point p shows the phantom point pose[m] @ atlas_to_native[m] @ p, the same for every sequence.
    truth = {m: poses[m] @ from_list(record["transforms"]["atlas_to_native"][m]) for m in MODALITIES}
    brain = np.argwhere(np.asarray(out["t1ce"].dataobj) > 0)[::500]
    from agsevnet.prepare.geometry import LPS

    pts = (LPS @ BRATS_AFFINE @ np.c_[brain, np.ones(len(brain))].T)
    for m in MODALITIES:
        err = np.linalg.norm((truth[m] @ pts - truth["t1ce"] @ pts)[:3], axis=0)
        assert np.percentile(err, 95) < 2.0, (m, np.percentile(err, 95))  # sequences within 2 mm of each other
    expected = back_on_atlas(mask.astype(np.float32), truth["t1ce"]) > 0.5
    got = np.asarray(out["t1ce"].dataobj) > 0
    assert dice(got, expected) >= 0.95
    qc = record["qc"]
    assert qc["warnings"] == [] and 800 < qc["brain_volume_ml"] < 2000
    assert json.loads((case_dir / "prepare.json").read_text())["qc"] == qc


def test_prepare_is_rigid_by_default(phantom_case) -> None:
    from agsevnet.prepare.geometry import from_list

    record = phantom_case[-1].record
    assert record["registration"]["atlas_transform"] == "rigid"
    assert [r["kind"] for r in record["registration"]["t1ce_to_atlas"]] == ["rigid"]
    lin = from_list(record["transforms"]["t1ce_to_atlas"])[:3, :3]
    np.testing.assert_allclose(np.linalg.svd(lin, compute_uv=False), 1.0, atol=1e-5)  # the brain keeps its size


def test_prepare_keeps_a_finished_case_and_refuses_other_inputs(phantom_case) -> None:
    from agsevnet.errors import OutputExistsError
    from agsevnet.prepare.pipeline import prepare

    tmp, folder, *_ = phantom_case
    again = prepare(folder, tmp / "prepared")
    assert again.skipped
    with pytest.raises(OutputExistsError):
        prepare(folder, tmp / "prepared", files={"t1": folder / "AX_T2_TSE.nii.gz"})
    with pytest.raises(OutputExistsError, match="other inputs or settings"):
        prepare(folder, tmp / "prepared", atlas_transform="affine")


def test_prepare_affine_on_request(phantom_case, capsys) -> None:
    from agsevnet.cli import main
    from agsevnet.prepare.geometry import from_list
    from agsevnet.prepare.pipeline import prepare

    tmp, folder, *_ = phantom_case
    with pytest.raises(SystemExit) as done:
        main(["prepare", str(folder), "--out", str(tmp / "bad"), "--atlas-transform", "similarity", "-q"])
    assert done.value.code == 1 and "one of rigid, affine, got 'similarity'" in capsys.readouterr().err
    done = prepare(folder, tmp / "affine", atlas_transform="affine", picture=False)
    record = done.record
    assert [r["kind"] for r in record["registration"]["t1ce_to_atlas"]] == ["rigid", "affine"]
    rigid, affine = (from_list(record["transforms"][k]) for k in ("t1ce_to_atlas_rigid", "t1ce_to_atlas"))
    assert not np.allclose(rigid, affine)  # the affine stage ran from the rigid result
    masks = [np.asarray(nib.load(d / "patient_t1ce.nii.gz").dataobj) > 0
             for d in (done.case_dir, phantom_case[-1].case_dir)]
    assert dice(*masks) >= 0.9  # the same brain, up to the affine's scaling


def test_labels_go_back_onto_the_t1ce_grid(phantom_case) -> None:
    from agsevnet.prepare.native import labels_to_native
    from agsevnet.prepare.geometry import from_list

    tmp, folder, poses, mask, labels, prepared = phantom_case
    record = prepared.record
    truth_t1ce = poses["t1ce"] @ from_list(record["transforms"]["atlas_to_native"]["t1ce"])
    on_atlas = np.rint(back_on_atlas(labels.astype(np.float32), truth_t1ce)).astype(np.uint8)
    native = labels_to_native(on_atlas, record)
    ref = nib.load(folder / "AX_T1_POST_GAD.nii.gz")
    assert native.shape == ref.shape
    # the phantom's labels recorded directly on the T1ce's grid (what the scanner would show)
    from agsevnet.prepare.atlas import BRATS_AFFINE
    from agsevnet.prepare.geometry import from_sitk, grid_image, resample, to_sitk

    direct = from_sitk(resample(to_sitk(labels.astype(np.float32), BRATS_AFFINE), grid_image(ref.shape, ref.affine),
                                poses["t1ce"], interpolation="nearest"))
    assert dice(native > 0, direct > 0) >= 0.9


def test_predict_prepare_writes_labels_on_the_input_t1ce_grid(phantom_case, tmp_path) -> None:
    from agsevnet.cli import main

    _, folder, *_ = phantom_case
    with pytest.raises(SystemExit) as done:
        main(["predict", str(folder), "--prepare", "--out", str(tmp_path / "p"), "-q", "--save-uncertainty"])
    assert done.value.code in (0, None)
    ref = nib.load(folder / "AX_T1_POST_GAD.nii.gz")
    seg = nib.load(tmp_path / "p" / "patient.nii.gz")
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    unc = nib.load(tmp_path / "p" / "patient_uncertainty.nii.gz")
    assert unc.shape == ref.shape
    sidecar = json.loads((tmp_path / "p" / "patient.json").read_text())
    assert sidecar["prediction"] == "patient.nii.gz" and "confidence" in sidecar
    assert (tmp_path / "p" / "atlas" / "patient.nii.gz").exists()


def test_prepare_without_the_extra_says_how_to_install(monkeypatch) -> None:
    import builtins

    from agsevnet.errors import ConfigError
    from agsevnet.prepare import require

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "no_such_dependency":
            raise ImportError("No module named 'no_such_dependency'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match=r"pip install .*agsevnet\[prepare\]"):
        require("no_such_dependency")
