"""Sequence detection from file names for ``agsevnet prepare`` (issue 16)."""

from __future__ import annotations

import pytest

from agsevnet.errors import DataError
from agsevnet.prepare.sequences import assign, sequence_of

CLINICAL = [
    "MRHR_FLAIR_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_FLAIR_AX_SE_IR_5_tir2d1_21_fla.nii.gz",
    "MRHR_T1_AX_POST_GAD_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz",
    "MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz",
    "T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz",
]


@pytest.mark.parametrize("name, modality", [
    ("BraTS2021_00000_flair.nii.gz", "flair"), ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),
    ("BraTS2021_00000_t1.nii.gz", "t1"), ("BraTS2021_00000_t2.nii.gz", "t2"),
    ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"), ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
    ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"), ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
    ("T2 FLAIR axial.nii", "flair"), ("t1 post gd.nii.gz", "t1ce"), ("Sag T1 Gad.nii.gz", "t1ce"),
    ("BraTS2021_00000_seg.nii.gz", None), ("notes.nii.gz", None), ("t12.nii.gz", None),
])
def test_sequence_words(name: str, modality: str | None) -> None:
    assert sequence_of(name) == modality


def test_clinical_names_are_told_apart() -> None:
    got = assign(CLINICAL)
    assert got == {"flair": CLINICAL[0], "t1ce": CLINICAL[1], "t2": CLINICAL[2], "t1": CLINICAL[3]}


def test_ambiguity_lists_the_files_and_the_flags() -> None:
    names = ["a_t1.nii.gz", "b_t1.nii.gz", "c_flair.nii.gz", "d_t2.nii.gz", "e_gad.nii.gz"]
    with pytest.raises(DataError) as err:
        assign(names)
    msg = str(err.value)
    assert "\n" not in msg
    assert "a_t1.nii.gz" in msg and "b_t1.nii.gz" in msg and "--t1" in msg and "--flair" in msg
    # a flag settles it
    assert assign(names, {"t1": "a_t1.nii.gz"}) == {"flair": "c_flair.nii.gz", "t1ce": "e_gad.nii.gz",
                                                     "t2": "d_t2.nii.gz"}


def test_missing_sequence_is_named() -> None:
    with pytest.raises(DataError, match="no file named as t2"):
        assign(["x_flair.nii.gz", "x_t1.nii.gz", "x_t1ce.nii.gz", "x_seg.nii.gz"])
