"""Several patients in one ``agsevnet prepare`` / ``predict --prepare`` run: which folders are patients
(:func:`agsevnet.prepare.inputs.patient_folders`), and the cohort loop (one failure does not stop the others, it
is listed and makes the exit code 1; a second run keeps what the first did)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agsevnet.errors import DataError
from agsevnet.prepare.inputs import patient_folders

NAMES = ("AX_FLAIR.nii.gz", "AX_T1_SE.nii.gz", "AX_T1_POST_GAD.nii.gz", "AX_T2_TSE.nii.gz")


def _touch(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), folder / name)
    return folder


def test_one_patient_folder_is_one_patient(tmp_path) -> None:
    patient = _touch(tmp_path / "p1", NAMES)
    assert patient_folders(patient) == [patient]


def test_a_folder_of_patient_folders_is_a_cohort_and_a_bad_patient_is_kept_in_it(tmp_path) -> None:
    a = _touch(tmp_path / "cohort" / "A", NAMES)
    b = _touch(tmp_path / "cohort" / "B", NAMES)
    # two FLAIRs: this patient's preparation must fail with that error, not be left out silently
    c = _touch(tmp_path / "cohort" / "C", NAMES + ("COR_FLAIR.nii.gz",))
    (tmp_path / "cohort" / "notes").mkdir()  # no images: not a patient
    (tmp_path / "cohort" / ".cache").mkdir()
    assert patient_folders(tmp_path / "cohort") == [a, b, c]


def test_a_patient_with_one_folder_per_series_is_one_patient(tmp_path) -> None:
    """dcm2niix-style output: a sub-folder per series, one file each. No sub-folder names four sequences, so the
    folder is one patient (read_inputs then says that its NIfTI files are not in the folder itself)."""
    from agsevnet.prepare.inputs import read_inputs

    patient = tmp_path / "p"
    for name in NAMES:
        _touch(patient / name.removesuffix(".nii.gz"), [name])
    assert patient_folders(patient) == [patient]
    with pytest.raises(DataError, match=r"only in its sub-folders \(AX_FLAIR, AX_T1_POST_GAD, AX_T1_SE, AX_T2_TSE\)"):
        read_inputs(patient)


def test_dicom_cohorts_are_told_apart_by_patient_id(tmp_path) -> None:
    pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from agsevnet.prepare.dicom import write_series

    img = nib.Nifti1Image(np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3), np.diag([1.0, 1.0, 3.0, 1.0]))
    one = tmp_path / "one"  # one patient, a folder per series: one patient
    for n, desc in enumerate(("FLAIR", "T1", "T1 POST GAD", "T2"), start=1):
        write_series(img, one / f"s{n}", series_description=desc, series_number=n, patient_id="P1")
    assert patient_folders(one) == [one]

    cohort = tmp_path / "cohort"
    for pid in ("P1", "P2"):
        for n, desc in enumerate(("FLAIR", "T1 POST GAD"), start=1):
            write_series(img, cohort / pid / f"s{n}", series_description=desc, series_number=n, patient_id=pid)
    assert patient_folders(cohort) == [cohort / "P1", cohort / "P2"]

    write_series(img, cohort / "P2" / "s9", series_description="T2", series_number=9, patient_id="P3")
    with pytest.raises(DataError, match=r"several patients \(PatientID P2, P3\)"):
        patient_folders(cohort)


@pytest.mark.slow
def test_prepare_and_predict_a_cohort_go_on_past_a_failed_patient_and_resume(tmp_path, capsys) -> None:
    """A cohort of two patients, one with two FLAIR files: the other is prepared and segmented, the failure is
    listed with its reason and the exit code is 1, the cases to check at the end; running again keeps the finished
    patient."""
    pytest.importorskip("SimpleITK")
    from agsevnet.cli import main
    from agsevnet.synth.phantom import make_phantom
    from test_prepare import _write_clinical

    images, _ = make_phantom(3)
    folder, *_ = _write_clinical(tmp_path, images, seed=5)
    cohort = tmp_path / "cohort"
    shutil.copytree(folder, cohort / "good")
    shutil.copytree(folder, cohort / "twoflair")
    shutil.copy(cohort / "twoflair" / "AX_FLAIR.nii.gz", cohort / "twoflair" / "SAG_FLAIR.nii.gz")

    def run(*args) -> tuple[int, str]:
        with pytest.raises(SystemExit) as done:
            main([*args, "-q"])
        captured = capsys.readouterr()
        return done.value.code or 0, captured.out + captured.err

    code, text = run("prepare", str(cohort), "--out", str(tmp_path / "p" / "prepared"))
    assert code == 1
    assert "2 patient(s): 1 prepared, 0 kept from an earlier run, 1 failed" in text
    assert "FAILED twoflair:" in text and "flair" in text.split("FAILED twoflair:")[1].lower()
    assert (tmp_path / "p" / "prepared" / "good" / "prepare.json").exists()
    assert not (tmp_path / "p" / "prepared" / "twoflair").exists()

    code, text = run("prepare", str(cohort), "--flair", str(cohort / "good" / "AX_FLAIR.nii.gz"), "--out",
                     str(tmp_path / "x"))
    assert code == 1 and "holds 2 patients: --flair name one patient's files" in text

    code, text = run("predict", str(cohort), "--prepare", "--out", str(tmp_path / "p"), "--confidence-threshold", "1")
    assert code == 1 and "1 segmented, 0 kept from an earlier run, 1 failed" in text
    assert "check these (1): good (low confidence" in text  # the cases to look at, listed at the end
    ref = nib.load(cohort / "good" / "AX_T1_POST_GAD.nii.gz")
    seg = nib.load(tmp_path / "p" / "good.nii.gz")
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    written = seg.get_fdata().copy()
    mtime = (tmp_path / "p" / "good.nii.gz").stat().st_mtime_ns

    shutil.rmtree(cohort / "twoflair")  # the user removes the bad patient and runs again: the good one is kept
    code, text = run("predict", str(cohort), "--prepare", "--out", str(tmp_path / "p"))
    assert code == 0 and "kept from an earlier run" in text
    assert (tmp_path / "p" / "good.nii.gz").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(nib.load(tmp_path / "p" / "good.nii.gz").get_fdata(), written)
