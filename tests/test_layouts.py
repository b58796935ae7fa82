"""Layout detection: BraTS 2018-2021 and 2023+, MSD Task01, nnU-Net raw (with and without dataset.json),
explicit files. Discovery reads only names and dataset.json, so most tests use empty files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agsevnet import MODALITIES
from agsevnet.data.layouts import case_from_files, convention_from_labels, discover, modality_of
from agsevnet.errors import ConfigError, DataError

BRATS2020 = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
BRATS2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def brats_case(root: Path, case: str, tokens: dict[str, str], sep: str, ext: str = ".nii.gz", seg: bool = True,
               skip: tuple[str, ...] = ()) -> Path:
    folder = root / case
    for modality, token in tokens.items():
        if modality not in skip:
            touch(folder / f"{case}{sep}{token}{ext}")
    if seg:
        touch(folder / f"{case}{sep}seg{ext}")
    return folder


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_brats2020_folder_with_nii_no_label_and_brats18_capitalisation(tmp_path):
    brats_case(tmp_path, "BraTS20_Training_001", BRATS2020, "_")
    brats_case(tmp_path, "Brats18_2013_2_1", {m: t.upper() for m, t in BRATS2020.items()}, "_", ext=".nii")
    brats_case(tmp_path, "BraTS2021_00007", BRATS2020, "_", seg=False)
    (tmp_path / "name_mapping.csv").write_text("x")  # files next to the case folders are ignored

    specs = discover(tmp_path)
    assert [s.case_id for s in specs] == ["BraTS2021_00007", "BraTS20_Training_001", "Brats18_2013_2_1"]
    for spec in specs:
        assert spec.scheme == "brats2020" and spec.label_convention == "brats2020"
        assert spec.problems == [] and list(spec.images) == list(MODALITIES)
        assert all(src.channel is None for src in spec.images.values())
    no_label, train, upper = specs
    assert no_label.label is None and not no_label.has_label
    assert train.images["t1ce"].path == tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz"
    assert train.label == tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    assert upper.images["t1"].path.name == "Brats18_2013_2_1_T1.nii"  # t1 is not confused with t1ce
    assert upper.images["t1ce"].path.name == "Brats18_2013_2_1_T1CE.nii"
    assert upper.label.name == "Brats18_2013_2_1_seg.nii"


def test_brats2023_folder_and_a_single_case_folder(tmp_path):
    brats_case(tmp_path, "BraTS-GLI-00000-000", BRATS2023, "-")
    brats_case(tmp_path, "BraTS-GLI-00001-000", BRATS2023, "-", ext=".nii", seg=False)
    specs = discover(tmp_path)
    assert [s.case_id for s in specs] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert {(s.scheme, s.label_convention) for s in specs} == {("brats2023", "brats2023")}
    assert specs[0].images["flair"].path.name == "BraTS-GLI-00000-000-t2f.nii.gz"
    assert specs[0].images["t1ce"].path.name == "BraTS-GLI-00000-000-t1c.nii.gz"
    assert specs[1].label is None

    (one,) = discover(tmp_path / "BraTS-GLI-00000-000")  # one case folder
    assert one.case_id == "BraTS-GLI-00000-000" and one.label.name == "BraTS-GLI-00000-000-seg.nii.gz"


def test_flat_folder_and_bare_names(tmp_path):
    flat = tmp_path / "flat"
    for case in ("A", "B"):
        for token in BRATS2020.values():
            touch(flat / f"{case}_{token}.nii.gz")
    assert [s.case_id for s in discover(flat)] == ["A", "B"]

    for token in BRATS2020.values():
        touch(tmp_path / "bare" / "patient7" / f"{token}.nii.gz")
    touch(tmp_path / "bare" / "patient7" / "seg.nii.gz")
    touch(tmp_path / "bare" / "patient7" / "brainmask.nii.gz")
    (spec,) = discover(tmp_path / "bare")
    assert spec.case_id == "patient7" and spec.problems == [] and spec.label.name == "seg.nii.gz"
    assert any("brainmask.nii.gz" in n and "ignored" in n for n in spec.notes)


def test_missing_and_duplicated_modalities_are_problems_naming_the_files(tmp_path):
    brats_case(tmp_path, "Missing", BRATS2020, "_", skip=("t1ce",))
    dup = brats_case(tmp_path, "Dup", BRATS2020, "_")
    touch(dup / "Dup_flair.nii")  # the same modality twice
    touch(dup / "Dup-t2f.nii.gz")  # and once more under the 2023 name
    brats_case(tmp_path, "Good", BRATS2020, "_")
    touch(tmp_path / "notacase" / "scan.nii.gz")

    specs = {s.case_id: s for s in discover(tmp_path)}
    assert specs["Good"].problems == []
    (missing,) = specs["Missing"].problems
    assert "Missing_t1ce.nii.gz" in missing and "missing" in missing and "t1ce" in missing
    assert "t1ce" not in specs["Missing"].images
    (dup_problem,) = specs["Dup"].problems
    assert "duplicated modality flair" in dup_problem
    assert all(name in dup_problem for name in ("Dup_flair.nii.gz", "Dup_flair.nii", "Dup-t2f.nii.gz"))
    (unknown,) = specs["notacase"].problems
    assert "scan.nii.gz" in unknown and str(tmp_path / "notacase") in unknown


def test_duplicated_case_ids_are_problems(tmp_path):
    brats_case(tmp_path, "X", BRATS2020, "_")
    for token in BRATS2020.values():
        touch(tmp_path / "copy" / f"X_{token}.nii.gz")
    specs = discover(tmp_path)
    assert [s.case_id for s in specs] == ["X", "X"]
    assert all(len(s.problems) == 1 and "used more than once" in s.problems[0] for s in specs)


MSD_JSON = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}


@pytest.mark.parametrize("with_json", [True, False])
def test_msd_task01(tmp_path, with_json):
    if with_json:
        write_json(tmp_path / "dataset.json", MSD_JSON)
    for case in ("BRATS_001", "BRATS_002"):
        touch(tmp_path / "imagesTr" / f"{case}.nii.gz")
        touch(tmp_path / "labelsTr" / f"{case}.nii.gz")
    touch(tmp_path / "imagesTr" / "._BRATS_001.nii.gz")  # macOS metadata in the MSD tarball
    touch(tmp_path / "imagesTs" / "BRATS_485.nii")

    specs = discover(tmp_path)
    assert [s.case_id for s in specs] == ["BRATS_001", "BRATS_002", "BRATS_485"]
    for spec in specs:
        assert spec.scheme == "msd" and spec.label_convention == "msd" and spec.problems == []
        assert {m: (src.path.name, src.channel) for m, src in spec.images.items()} == {
            m: (spec.images["flair"].path.name, c) for c, m in enumerate(MODALITIES)}
        assert bool(spec.notes) != with_json  # the assumed order is a note, not a problem
    assert specs[0].label == tmp_path / "labelsTr" / "BRATS_001.nii.gz"
    assert specs[2].label is None and specs[2].images["t2"].path == tmp_path / "imagesTs" / "BRATS_485.nii"


def test_msd_channel_order_from_dataset_json_and_orphan_labels(tmp_path):
    write_json(tmp_path / "dataset.json", {**MSD_JSON, "modality": {"0": "T2", "1": "FLAIR", "2": "T1", "3": "T1Gd"}})
    touch(tmp_path / "imagesTr" / "BRATS_001.nii.gz")
    touch(tmp_path / "labelsTr" / "BRATS_001.nii.gz")
    touch(tmp_path / "labelsTr" / "BRATS_009.nii.gz")
    good, orphan = discover(tmp_path)
    assert {m: s.channel for m, s in good.images.items()} == {"t2": 0, "flair": 1, "t1": 2, "t1ce": 3}
    assert orphan.case_id == "BRATS_009" and "BRATS_009.nii.gz" in orphan.problems[0]


def nnunet_case(root: Path, case: str, channels=range(4), split="Tr", label=True, ext=".nii.gz"):
    for c in channels:
        touch(root / f"images{split}" / f"{case}_{c:04d}{ext}")
    if label:
        touch(root / f"labels{split}" / f"{case}{ext}")


def test_nnunet_v2_dataset_json_channel_order_and_region_labels(tmp_path):
    # nnU-Net's own Dataset137_BraTS2021 conversion: other channel order, region-based labels, MSD values.
    write_json(tmp_path / "dataset.json", {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        "numTraining": 2, "file_ending": ".nii.gz"})
    nnunet_case(tmp_path, "BraTS2021_00000")
    nnunet_case(tmp_path, "BraTS2021_00002", ext=".nii")
    nnunet_case(tmp_path, "BraTS2021_01000", split="Ts", label=False)

    specs = discover(tmp_path)
    assert [s.case_id for s in specs] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_01000"]
    for spec in specs:
        assert spec.scheme == "nnunet" and spec.label_convention == "msd" and spec.problems == []
        assert {m: re.search(r"_(\d{4})\.nii", s.path.name)[1] for m, s in spec.images.items()} == {
            "t1": "0000", "t1ce": "0001", "t2": "0002", "flair": "0003"}
    assert specs[1].images["flair"].path.name == "BraTS2021_00002_0003.nii"
    assert specs[1].label.name == "BraTS2021_00002.nii"
    assert specs[2].label is None


def test_nnunet_v1_brats_style_labels_and_missing_channel(tmp_path):
    write_json(tmp_path / "dataset.json", {
        "modality": {"0": "FLAIR", "1": "T1", "2": "T1-CE", "3": "T2"},
        "labels": {"0": "background", "1": "necrotic", "2": "edema", "3": "enhancing"}})
    nnunet_case(tmp_path, "case1")
    nnunet_case(tmp_path, "case2", channels=(0, 1, 3))
    nnunet_case(tmp_path, "case3", channels=(0, 1, 2, 3, 4))
    one, two, three = discover(tmp_path)
    assert one.label_convention == "brats2023" and one.problems == []
    assert one.images["t1ce"].path.name == "case1_0002.nii.gz"
    (missing,) = two.problems
    assert "case2_0002.nii.gz" in missing and "t1ce" in missing
    (extra,) = three.problems
    assert "case3_0004.nii.gz" in extra and "unexpected channel 4" in extra


def test_nnunet_without_dataset_json_assumes_msd_and_notes_it(tmp_path):
    nnunet_case(tmp_path, "BRATS_001")
    (spec,) = discover(tmp_path)
    assert spec.scheme == "nnunet" and spec.label_convention == "msd" and spec.problems == []
    assert [s.path.name for s in spec.images.values()] == [f"BRATS_001_{c:04d}.nii.gz" for c in range(4)]
    assert len(spec.notes) == 1 and "no dataset.json" in spec.notes[0] and "MSD" in spec.notes[0]


def test_unusable_dataset_json_is_a_problem(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    nnunet_case(tmp_path, "a")
    (spec,) = discover(tmp_path)
    assert any(str(tmp_path / "dataset.json") in p and "cannot be read" in p for p in spec.problems)

    write_json(tmp_path / "dataset.json", {"channel_names": {"0": "FLAIR", "1": "T1", "2": "ADC", "3": "T2"},
                                           "labels": {"background": 0, "tumour": 1}})
    (spec,) = discover(tmp_path)
    assert any("'ADC'" in p for p in spec.problems)
    assert any("tumour" in p for p in spec.problems)


@pytest.mark.parametrize("labels,convention", [
    ({"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}, "msd"),
    ({"background": 0, "NCR": 1, "ED": 2, "ET": 3}, "brats2023"),
    ({"background": 0, "necrotic tumor core": 1, "peritumoral edema": 2, "GD-enhancing tumor": 4}, "brats2020"),
    ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}, "msd"),
    ({"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}, "brats2023"),
])
def test_convention_from_dataset_json_labels(labels, convention):
    assert convention_from_labels(labels) == convention


@pytest.mark.parametrize("name,modality", [
    ("FLAIR", "flair"), ("Flair", "flair"), ("T2f", "flair"), ("T2-FLAIR", "flair"), ("T1", "t1"), ("T1w", "t1"),
    ("t1n", "t1"), ("T1ce", "t1ce"), ("T1gd", "t1ce"), ("t1c", "t1ce"), ("T1-CE", "t1ce"), ("T2", "t2"),
    ("T2w", "t2"), ("ADC", None),
])
def test_modality_names(name, modality):
    assert modality_of(name) == modality


def test_case_from_files(tmp_path):
    spec = case_from_files(*(tmp_path / f"P1_{t}.nii.gz" for t in BRATS2020.values()), label=tmp_path / "P1_seg.nii.gz")
    assert spec.scheme == "files" and spec.case_id == "P1" and spec.label_convention == "brats2020"
    assert [spec.images[m].path.name for m in MODALITIES] == [f"P1_{t}.nii.gz" for t in BRATS2020.values()]
    spec23 = case_from_files(*(tmp_path / f"BraTS-GLI-1-000-{t}.nii.gz" for t in BRATS2023.values()))
    assert spec23.label_convention == "brats2023" and spec23.case_id == "BraTS-GLI-1-000" and spec23.label is None
    plain = case_from_files("a.nii", "b.nii", "c.nii", "d.nii", case_id="mine", label_convention="msd")
    assert plain.case_id == "mine" and plain.label_convention == "msd" and plain.problems == []
    same = case_from_files("a.nii", "a.nii", "c.nii", "d.nii", label_convention="brats2020")
    assert same.case_id == "a" and len(same.problems) == 1 and "both flair and t1" in same.problems[0]
    with pytest.raises(ValueError, match="unknown label convention"):
        case_from_files("a.nii", "b.nii", "c.nii", "d.nii", label_convention="brats2019")


def test_case_from_files_without_a_case_id_or_convention_in_the_names(tmp_path):
    """``Flair.nii.gz``, ``T1.nii.gz``, ``T1c.nii.gz``, ``T2.nii.gz``: the case is the folder's, and ``T1c``
    (a BraTS 2023 token among 2018-2021 ones) does not decide the label convention: it must be given."""
    folder = tmp_path / "Patient7"
    names = [folder / n for n in ("Flair.nii.gz", "T1.nii.gz", "T1c.nii.gz", "T2.nii.gz")]
    with pytest.raises(ConfigError, match="cannot tell the label convention .*--labels") as info:
        case_from_files(*names)
    assert info.value.path == names[0]
    spec = case_from_files(*names, label_convention="brats2023")
    assert spec.case_id == "Patient7" and spec.label_convention == "brats2023"
    plain_names = [folder / n for n in ("T2-FLAIR.nii", "T1w.nii", "T1gd.nii", "T2w.nii")]
    assert case_from_files(*plain_names, label_convention="msd").case_id == "Patient7"
    # One release's tokens throughout decide, with or without a case prefix.
    bare23 = case_from_files(*(folder / f"{t}.nii.gz" for t in BRATS2023.values()))
    assert bare23.case_id == "Patient7" and bare23.label_convention == "brats2023"
    bare20 = case_from_files(*(folder / f"{t}.nii.gz" for t in BRATS2020.values()))
    assert bare20.case_id == "Patient7" and bare20.label_convention == "brats2020"
    with pytest.raises(ConfigError):  # names that say nothing
        case_from_files(*(folder / f"{n}.nii.gz" for n in "abcd"))


def test_nothing_recognisable_raises_dataerror_with_a_hint(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        discover(tmp_path / "nope")
    touch(tmp_path / "file.nii.gz")
    with pytest.raises(DataError, match="is a file"):
        discover(tmp_path / "file.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no recognisable case") as err:
        discover(tmp_path / "empty")
    assert err.value.path == tmp_path / "empty" and "_flair.nii.gz" in str(err.value) and "imagesTr" in str(err.value)


def test_discovery_order_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"BraTS2021_{i:05d}" for i in rng.permutation(30)]
    for name in names:
        brats_case(tmp_path, name, BRATS2020, "_")
    ids = [s.case_id for s in discover(tmp_path)]
    assert ids == sorted(names) and ids == [s.case_id for s in discover(tmp_path)]


def test_phantoms_in_every_naming_are_discovered_and_load_identically(tmp_path):
    from agsevnet.data.io import load_case
    from agsevnet.synth.phantom import write_phantom_dataset

    expected = {"brats2020": ("brats2020", "brats2020"), "brats2023": ("brats2023", "brats2023"),
                "msd": ("msd", "msd"), "nnunet": ("nnunet", "msd")}  # conventions read from the dataset.json
    loaded = {}
    for naming, (scheme, convention) in expected.items():
        write_phantom_dataset(tmp_path / naming, cases=2, seed=3, shape=(40, 40, 24), naming=naming)
        specs = discover(tmp_path / naming)
        assert len(specs) == 2
        for spec in specs:
            assert spec.scheme == scheme and spec.label_convention == convention, (naming, spec)
            assert spec.problems == [] and spec.notes == [] and spec.has_label, (naming, spec)
        loaded[naming] = [load_case(spec) for spec in specs]
    reference = loaded["brats2020"]
    assert all(set(np.unique(ref.label)) == {0, 1, 2, 3} for ref in reference)  # every class, so mix-ups show
    for naming, cases in loaded.items():
        for case, ref in zip(cases, reference):
            assert np.array_equal(case.images, ref.images), naming
            assert np.array_equal(case.label, ref.label), naming
            assert case.geometry.shape == ref.geometry.shape == (40, 40, 24)
