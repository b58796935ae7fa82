"""Loading cases and ``agsevnet check``: every problem of every case is reported with its file, reading never
crashes, the exit status says whether there was any; real BraTS cases load and check clean."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agsevnet import MODALITIES
from agsevnet.cli import main
from agsevnet.data.checks import check_dataset
from agsevnet.data.io import load_case
from agsevnet.data.layouts import case_from_files, discover
from agsevnet.errors import DataError

AFFINE = np.array([[-1.0, -0.0, -0.0, -0.0], [-0.0, -1.0, -0.0, 7.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (8, 8, 8)
TOKENS = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def modality_data(index: int, shape=SHAPE) -> np.ndarray:
    """Distinct, non-zero int16 data per modality (so a channel mix-up shows)."""
    rng = np.random.default_rng(index)
    return (rng.integers(1, 100, shape) + 1000 * (index + 1)).astype(np.int16)


def seg_data(values=(1, 2, 4), dtype=np.uint8, shape=SHAPE) -> np.ndarray:
    seg = np.zeros(shape, dtype=dtype)
    for i, v in enumerate(values):
        seg[1 + i, 2:5, 2:5] = v
    return seg


def brats_case(root: Path, case: str) -> dict[str, Path]:
    """A good BraTS 2018-2021 case; returns its files by modality (and "seg")."""
    files = {m: write(root / case / f"{case}_{t}.nii.gz", modality_data(i)) for i, (m, t) in enumerate(TOKENS.items())}
    files["seg"] = write(root / case / f"{case}_seg.nii.gz", seg_data())
    return files


def cut(path: Path, fraction: float) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])


def broken_dataset(root: Path) -> dict[str, list[tuple[str, str]]]:
    """One case per problem; returns case -> [(file name a problem must name, words it must contain)]."""
    expected: dict[str, list[tuple[str, str]]] = {}

    f = brats_case(root, "MissingMod")
    f["t1ce"].unlink()
    expected["MissingMod"] = [("MissingMod_t1ce.nii.gz", "missing")]

    f = brats_case(root, "DupMod")
    write(root / "DupMod" / "DupMod_flair.nii", modality_data(0))
    expected["DupMod"] = [("DupMod_flair.nii", "duplicated modality flair")]

    f = brats_case(root, "NotNifti")
    f["t1"].write_bytes(np.random.default_rng(1).bytes(3000))
    expected["NotNifti"] = [("NotNifti_t1.nii.gz", "not a gzip file")]
    f = brats_case(root, "NotNifti2")
    f["t1"].unlink()
    (root / "NotNifti2" / "NotNifti2_t1.nii").write_bytes(np.random.default_rng(2).bytes(3000))
    expected["NotNifti2"] = [("NotNifti2_t1.nii", "not a NIfTI file")]

    f = brats_case(root, "Truncated")
    cut(f["t2"], 0.8)
    expected["Truncated"] = [("Truncated_t2.nii.gz", "truncated")]
    f = brats_case(root, "TruncatedNii")
    f["t2"].unlink()
    raw = gzip.decompress(write(root / "x.nii.gz", modality_data(3)).read_bytes())
    (root / "x.nii.gz").unlink()
    (root / "TruncatedNii" / "TruncatedNii_t2.nii").write_bytes(raw[:600])
    expected["TruncatedNii"] = [("TruncatedNii_t2.nii", "truncated")]

    f = brats_case(root, "Empty")
    f["t1ce"].write_bytes(b"")
    expected["Empty"] = [("Empty_t1ce.nii.gz", "empty")]

    f = brats_case(root, "Corrupt")
    raw = bytearray(f["flair"].read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 32] = bytes(32)
    f["flair"].write_bytes(bytes(raw))
    expected["Corrupt"] = [("Corrupt_flair.nii.gz", "corrupt")]

    f = brats_case(root, "FourD")
    write(f["t1"], np.stack([modality_data(1)] * 2, axis=-1))
    expected["FourD"] = [("FourD_t1.nii.gz", "is 4D")]

    f = brats_case(root, "ShapeDiff")
    write(f["t1"], modality_data(1, shape=(8, 8, 9)))
    expected["ShapeDiff"] = [("ShapeDiff_t1.nii.gz", "shape (8, 8, 9) differs from ShapeDiff_flair.nii.gz's (8, 8, 8)")]

    f = brats_case(root, "AffineDiff")
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.01  # 10x the tolerance
    write(f["t2"], modality_data(3), shifted)
    expected["AffineDiff"] = [("AffineDiff_t2.nii.gz", "affine differs from AffineDiff_flair.nii.gz's by up to 0.01 mm")]

    f = brats_case(root, "NanInf")
    with_nan = modality_data(1).astype(np.float32)
    with_nan[1, 1, 1] = np.nan
    write(f["t1"], with_nan)
    with_inf = modality_data(3).astype(np.float32)
    with_inf[2, 2, 2] = -np.inf
    write(f["t2"], with_inf)
    expected["NanInf"] = [("NanInf_t1.nii.gz", "1 NaN/Inf"), ("NanInf_t2.nii.gz", "1 NaN/Inf")]

    f = brats_case(root, "Zero")
    write(f["t2"], np.zeros(SHAPE, np.int16))
    expected["Zero"] = [("Zero_t2.nii.gz", "all zero")]

    f = brats_case(root, "BadLabels")
    write(f["seg"], seg_data((1, 3, 5)))
    expected["BadLabels"] = [("BadLabels_seg.nii.gz", "unexpected label values [3, 5]")]
    f = brats_case(root, "FloatLabels")
    write(f["seg"], seg_data((1, 1.5, 4), dtype=np.float32))
    expected["FloatLabels"] = [("FloatLabels_seg.nii.gz", "unexpected label values [1.5]")]

    f = brats_case(root, "LabelShape")
    write(f["seg"], seg_data(shape=(8, 9, 8)))
    expected["LabelShape"] = [("LabelShape_seg.nii.gz", "label shape (8, 9, 8) differs from LabelShape_flair.nii.gz's (8, 8, 8)")]
    f = brats_case(root, "LabelAffine")
    write(f["seg"], seg_data(), np.diag([2.0, 2.0, 2.0, 1.0]))
    expected["LabelAffine"] = [("LabelAffine_seg.nii.gz", "label affine differs")]

    f = brats_case(root, "Several")  # more than one problem in one case: all are reported
    f["t1"].write_bytes(b"")
    write(f["t2"], np.zeros(SHAPE, np.int16))
    write(f["seg"], seg_data((1, 7)))
    expected["Several"] = [("Several_t1.nii.gz", "empty"), ("Several_t2.nii.gz", "all zero"),
                           ("Several_seg.nii.gz", "unexpected label values [7]")]

    f = brats_case(root, "Good")  # within tolerance: -0.0 vs 0.0 and a 1e-4 mm difference
    nearly = np.abs(AFFINE)
    nearly[1, 3] = 7.0001
    nearly[:2, :2] = AFFINE[:2, :2]
    write(f["t1ce"], modality_data(2), nearly)
    return expected


def test_every_problem_is_reported_with_its_file(tmp_path):
    expected = broken_dataset(tmp_path)
    reports = {r.case_id: r for r in check_dataset(tmp_path, workers=2, progress=False)}
    assert set(reports) == set(expected) | {"Good"}
    assert reports["Good"].ok, reports["Good"].problems
    assert reports["Good"].shape == SHAPE and reports["Good"].label_values == [0, 1, 2, 4]
    for case, wanted in expected.items():
        problems = reports[case].problems
        assert len(problems) == len(wanted), (case, problems)
        for name, words in wanted:
            assert any(name in p and words in p for p in problems), (case, name, words, problems)
        assert all(p.startswith(str(tmp_path)) for p in problems)  # each message starts with the file/folder


def test_check_command_lists_everything_and_exits_1(tmp_path, capsys):
    expected = broken_dataset(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(tmp_path), "--workers", "1"])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    for case in [*expected, "Good"]:
        assert any(line.split()[0] == case for line in lines), case
    problem_lines = [line for line in lines if line.startswith("problem: ")]
    assert len(problem_lines) == sum(len(v) for v in expected.values())
    for case, wanted in expected.items():
        for name, _ in wanted:
            assert any(line.startswith(f"problem: {case}: ") and name in line for line in problem_lines), name
    assert lines[-1].startswith(f"{len(expected) + 1} case(s) checked") and f"in {len(expected)} case(s)" in lines[-1]


def test_check_command_clean_dataset_exits_0(tmp_path, capsys):
    brats_case(tmp_path, "A")
    brats_case(tmp_path, "B")
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(tmp_path)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["case", "scheme", "modalities", "shape", "spacing", "labels"]
    assert out[1].split() == ["A", "brats2020", "flair,t1,t1ce,t2", "8x8x8", "1x1x1", "0,1,2,4", "(brats2020)"]
    assert out[-1].endswith("no problem found")


def test_check_command_nothing_found_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(tmp_path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path}: no recognisable case found") and "\n" not in err


def test_load_case_order_labels_and_geometry(tmp_path):
    files = brats_case(tmp_path, "A")
    (spec,) = discover(tmp_path)
    case = load_case(spec)
    assert case.images.dtype == np.float32 and case.images.shape == (4, *SHAPE)
    for i, modality in enumerate(MODALITIES):
        assert np.array_equal(case.images[i], modality_data(i)), modality
    assert case.label.dtype == np.uint8 and np.array_equal(case.label, seg_data((1, 2, 3)))  # 4 -> internal 3
    assert case.geometry.shape == SHAPE and np.array_equal(case.geometry.affine, nib.load(files["flair"]).affine)
    assert load_case(spec, with_label=False).label is None


def test_load_case_raises_dataerror_naming_the_file(tmp_path):
    expected = broken_dataset(tmp_path)
    specs = {s.case_id: s for s in discover(tmp_path)}
    with pytest.raises(DataError, match="truncated") as err:
        load_case(specs["Truncated"])
    assert err.value.path == tmp_path / "Truncated" / "Truncated_t2.nii.gz"
    with pytest.raises(DataError, match=r"and 2 more problem") as err:
        load_case(specs["Several"])
    assert err.value.path.name == "Several_t1.nii.gz"
    with pytest.raises(DataError, match="MissingMod_t1ce.nii.gz"):
        load_case(specs["MissingMod"])
    assert load_case(specs["BadLabels"], with_label=False).label is None  # images alone are fine
    for case in expected:  # every broken case fails to load, none with anything but a DataError
        with pytest.raises(DataError):
            load_case(specs[case])
    with pytest.raises(DataError, match="file not found"):
        load_case(case_from_files(*(tmp_path / f"nope_{t}.nii.gz" for t in TOKENS.values())))


MSD_JSON = {"modality": {"0": "T2", "1": "FLAIR", "2": "T1", "3": "T1Gd"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}


def test_msd_4d_files_channels_and_checks(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(MSD_JSON))
    order = [3, 0, 1, 2]  # file channel c holds modality MODALITIES[order[c]]
    write(tmp_path / "imagesTr" / "BRATS_001.nii.gz", np.stack([modality_data(i) for i in order], axis=-1))
    write(tmp_path / "labelsTr" / "BRATS_001.nii.gz", seg_data((1, 2, 3)))
    write(tmp_path / "imagesTr" / "BRATS_002.nii.gz", np.stack([modality_data(i) for i in order[:3]], axis=-1))
    write(tmp_path / "imagesTr" / "BRATS_003.nii.gz", modality_data(0))
    write(tmp_path / "labelsTr" / "BRATS_004.nii.gz", seg_data((1, 2, 3)))

    specs = discover(tmp_path)
    case = load_case(specs[0])
    for i in range(4):
        assert np.array_equal(case.images[i], modality_data(i))
    assert np.array_equal(case.label, seg_data((2, 1, 3)))  # MSD 1 edema, 2 non-enhancing -> internal 2, 1

    reports = {r.case_id: r for r in check_dataset(tmp_path, workers=1, progress=False)}
    assert reports["BRATS_001"].ok and reports["BRATS_001"].label_values == [0, 1, 2, 3]
    assert any("BRATS_002.nii.gz: has 3 channels, expected 4" in p for p in reports["BRATS_002"].problems)
    assert any("BRATS_003.nii.gz: is 3D" in p for p in reports["BRATS_003"].problems)
    assert any("BRATS_004.nii.gz: label file has no image" in p for p in reports["BRATS_004"].problems)


# ---------------------------------------------------------------------------------------------------------
# real BraTS cases


@pytest.mark.realdata
def test_check_real_data_is_clean(real_data, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(real_data)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    case_dirs = sorted(p.name for p in real_data.iterdir() if p.is_dir())
    assert len(case_dirs) == 11
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert sorted(rows) == case_dirs
    for case, row in rows.items():
        assert row[2:5] == ["flair,t1,t1ce,t2", "240x240x155", "1x1x1"], row
        assert row[5:] == (["0,1,2,3", "(brats2023)"] if case.startswith("BraTS-GLI") else ["0,1,2,4", "(brats2020)"])
    assert "problem:" not in out and out.splitlines()[-1].endswith("no problem found")


@pytest.mark.realdata
def test_brats2021_and_brats2023_names_of_one_patient_load_identically(real_data):
    old = load_case(discover(real_data / "BraTS2021_00000")[0])
    new = load_case(discover(real_data / "BraTS-GLI-00000-000")[0])
    assert (old.spec.label_convention, new.spec.label_convention) == ("brats2020", "brats2023")
    assert old.images.shape == (4, 240, 240, 155) and old.images.dtype == np.float32
    assert np.array_equal(old.images, new.images)
    assert np.array_equal(old.label, new.label) and set(np.unique(old.label)) == {0, 1, 2, 3}
    assert np.allclose(old.geometry.affine, new.geometry.affine)
    assert os.fspath(new.spec.label).endswith("-seg.nii.gz")  # the float32 label file of the 2023 release
