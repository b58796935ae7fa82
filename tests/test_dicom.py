"""DICOM in and out (``agsevnet.prepare.dicom``): series built here from synthetic volumes (no patient data) on
oblique, thick-sliced grids, read back to the same array and affine; series found in folders however they are
laid out; broken series refused with one line naming the folder; a label map written as a DICOM Segmentation
over a phantom's T1ce series and read back equal."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pydicom: pip install 'agsevnet[prepare]'")
pytest.importorskip("highdicom", reason="DICOM tests need highdicom: pip install 'agsevnet[prepare]'")

from agsevnet.data.labels import from_internal  # noqa: E402
from agsevnet.errors import DataError, OutputExistsError  # noqa: E402
from agsevnet.prepare.dicom import (  # noqa: E402
    BRATS_SEGMENTS,
    find_series,
    read_seg,
    read_series,
    series_affine,
    write_seg,
    write_series,
)
from agsevnet.synth.acquisition import acquire_case  # noqa: E402
from agsevnet.synth.phantom import BRATS_AFFINE, make_phantom  # noqa: E402


def oblique_affine(zooms=(0.9, 0.8, 5.0), angles=(20.0, -10.0, 35.0), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


def volume(shape=(20, 16, 7), seed=0, dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-200, 3000, shape).astype(dtype)


# ----------------------------------------------------------------------------------------------------------
# Series in and out


@pytest.mark.parametrize(
    "affine",
    [
        oblique_affine(),
        oblique_affine((1.0, 1.0, 3.0), (0.0, 90.0, 0.0)),  # sagittal slices
        oblique_affine((0.5, 0.5, 6.0), (0.0, 0.0, 0.0)) @ np.diag([-1.0, 1.0, -1.0, 1.0]),  # flipped axes
        BRATS_AFFINE,
    ],
    ids=["oblique", "sagittal", "flipped", "brats"],
)
def test_series_round_trip_gives_the_same_array_and_affine(tmp_path, affine):
    data = volume()
    series = write_series(nib.Nifti1Image(data, affine), tmp_path / "s", series_description="T1 post contrast")
    assert series.n_files == data.shape[2] and series.modality == "MR"
    assert series.description == "T1 post contrast"
    image = read_series(series)
    assert image.get_data_dtype() == np.int16 and np.array_equal(np.asarray(image.dataobj), data)
    assert np.allclose(image.affine, affine, atol=1e-4)
    assert np.allclose(series_affine(tmp_path / "s"), affine, atol=1e-4)  # from the headers alone
    assert image.header.get_sform(coded=True)[1] == 1


def test_rescaled_float_volume(tmp_path):
    data = np.random.default_rng(1).normal(0, 3.5, (12, 10, 5)).astype(np.float32)
    write_series(nib.Nifti1Image(data, oblique_affine()), tmp_path / "s")
    ds = pydicom.dcmread(sorted((tmp_path / "s").iterdir())[0])
    assert float(ds.RescaleSlope) != 1.0  # stored as integers plus a rescale
    image = read_series(tmp_path / "s")
    step = float(np.ptp(data)) / 65535
    assert image.get_data_dtype() == np.float32
    assert np.abs(np.asarray(image.dataobj) - data).max() <= step  # within one stored step


def test_slice_order_comes_from_positions_not_file_names(tmp_path):
    data = volume(seed=2)
    affine = oblique_affine()
    series = write_series(nib.Nifti1Image(data, affine), tmp_path / "s")
    # Rename so that names run against the positions, and drop the instance numbers.
    for k, path in enumerate(series.files):
        ds = pydicom.dcmread(path)
        del ds.InstanceNumber
        ds.save_as(tmp_path / "s" / f"z{len(series.files) - k:03d}.dcm")
        path.unlink()
    image = read_series(tmp_path / "s")
    assert np.array_equal(np.asarray(image.dataobj), data) and np.allclose(image.affine, affine, atol=1e-4)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    data = volume(seed=3)
    affine = oblique_affine((0.9, 0.9, 6.5))
    series = write_series(nib.Nifti1Image(data, affine), tmp_path / "s")
    for path in series.files:  # 5 mm slices with a 1.5 mm gap: the header's thickness is not the step
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "5"
        del ds.SpacingBetweenSlices
        ds.save_as(path)
    assert np.allclose(read_series(series).affine, affine, atol=1e-4)


def test_find_series_in_one_folder_and_in_folders(tmp_path):
    t1 = nib.Nifti1Image(volume((10, 8, 4), 1), oblique_affine())
    flair = nib.Nifti1Image(volume((12, 9, 6), 2), oblique_affine((1, 1, 4)))
    mixed = tmp_path / "mixed"
    a = write_series(t1, mixed, series_description="t1_mprage_tra", series_number=3)
    b = write_series(flair, mixed, series_description="t2_flair_tra", series_number=5)
    (mixed / "README.txt").write_text("not DICOM")
    found = find_series(mixed)
    assert [(s.description, s.modality, s.n_files) for s in found] == [("t1_mprage_tra", "MR", 4),
                                                                        ("t2_flair_tra", "MR", 6)]
    assert {s.uid for s in found} == {a.uid, b.uid} and all(s.folder == mixed for s in found)
    assert np.array_equal(np.asarray(read_series(found[1]).dataobj), np.asarray(flair.dataobj))
    with pytest.raises(DataError, match="2 DICOM series found") as error:
        read_series(mixed)
    assert str(mixed) in str(error.value)
    # One folder per series, under a patient folder.
    patient = tmp_path / "patient"
    write_series(t1, patient / "S3", series_description="T1")
    write_series(flair, patient / "S5" / "deeper", series_description="FLAIR")
    found = find_series(patient)
    assert [(s.description, s.folder.relative_to(patient).as_posix()) for s in found] == [
        ("T1", "S3"), ("FLAIR", "S5/deeper")]
    assert find_series(tmp_path / "patient" / "S3")[0].n_files == 4
    with pytest.raises(DataError, match="not a folder"):
        find_series(tmp_path / "nowhere")


def test_write_series_refuses_to_overwrite(tmp_path):
    image = nib.Nifti1Image(volume((6, 6, 3)), oblique_affine())
    write_series(image, tmp_path / "s")
    with pytest.raises(OutputExistsError):
        write_series(image, tmp_path / "s")
    write_series(image, tmp_path / "s", overwrite=True)


def _broken(tmp_path: Path, name: str) -> tuple[Path, list[Path]]:
    series = write_series(nib.Nifti1Image(volume((8, 8, 6)), oblique_affine()), tmp_path / name)
    return series.folder, list(series.files)


def test_broken_series_are_one_line_errors_naming_the_folder(tmp_path):
    folder, files = _broken(tmp_path, "gap")
    files[2].unlink()  # a missing slice
    with pytest.raises(DataError, match="not evenly spaced") as error:
        read_series(folder)
    assert str(error.value).startswith(str(folder)) and "\n" not in str(error.value)

    folder, files = _broken(tmp_path, "twice")
    shutil.copy(files[1], folder / "copy.dcm")
    ds = pydicom.dcmread(folder / "copy.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(DataError, match="same position"):
        read_series(folder)

    folder, files = _broken(tmp_path, "tilted")
    ds = pydicom.dcmread(files[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(files[3])
    with pytest.raises(DataError, match="different orientations"):
        read_series(folder)

    folder, files = _broken(tmp_path, "header")
    files[0].write_bytes(files[0].read_bytes()[:400])  # cut inside the header: not silently left out
    with pytest.raises(DataError, match="damaged DICOM file 0001-0001.dcm") as error:
        find_series(folder)
    assert str(error.value).startswith(str(folder))

    folder, files = _broken(tmp_path, "pixels")
    files[4].write_bytes(files[4].read_bytes()[:-20])  # cut inside the pixel data
    with pytest.raises(DataError, match="cannot decode the pixels of 0001-0005.dcm") as error:
        read_series(folder)
    assert str(error.value).startswith(str(folder))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no DICOM image series"):
        read_series(empty)


# ----------------------------------------------------------------------------------------------------------
# DICOM Segmentation


@pytest.fixture(scope="module")
def t1ce_series(tmp_path_factory):
    """A phantom's T1ce acquired as a clinical sequence (tilted, 0.9 x 0.9 x 5 mm) and written as DICOM, with the
    phantom's labels acquired on the same grid (BraTS 2020 values)."""
    from agsevnet.synth.acquisition import acquire_labels

    images, labels = make_phantom(4, (64, 64, 48), head=True)
    sequence = acquire_case(images[2:3], BRATS_AFFINE, np.random.default_rng(4), max_rotation_deg=12,
                            max_shift_mm=10, voxel_size=(0.9, 0.9, 5.0))[0]
    image = nib.Nifti1Image(np.rint(sequence.data).astype(np.int16), sequence.affine)
    folder = tmp_path_factory.mktemp("dicom") / "T1ce"
    series = write_series(image, folder, series_description="T1 post gad", patient_id="PHANTOM-4")
    native = from_internal(acquire_labels(labels, BRATS_AFFINE, image.shape, image.affine), "brats2020")
    assert set(np.unique(native)) == {0, 1, 2, 4}
    return series, image, native


def test_phantom_series_reads_back_as_the_nifti(t1ce_series):
    series, image, _ = t1ce_series
    back = read_series(series)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(image.dataobj))
    assert np.allclose(back.affine, image.affine, atol=1e-4)
    assert not np.allclose(back.affine[:3, :3], np.diag(np.diag(back.affine[:3, :3])), atol=1e-3)  # oblique


def test_seg_round_trip(t1ce_series, tmp_path):
    series, image, native = t1ce_series
    out = write_seg(native, series, tmp_path / "case_seg.dcm")
    assert np.array_equal(read_seg(out, series), native)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SOPClassUID == pydicom.uid.SegmentationStorage
    assert ds.StudyInstanceUID == pydicom.dcmread(series.files[0]).StudyInstanceUID and ds.PatientID == "PHANTOM-4"
    assert [item.SeriesInstanceUID for item in ds.ReferencedSeriesSequence] == [series.uid]
    segments = [(item.SegmentNumber, item.SegmentLabel, item.TrackingID,
                 item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) for item in ds.SegmentSequence]
    assert segments == [(1, "Necrotic and non-enhancing tumor core", "BraTS label 1", "Necrosis"),
                        (2, "Peritumoral edema", "BraTS label 2", "Edema"),
                        (3, "GD-enhancing tumor", "BraTS label 4", "Neoplasm")]
    import highdicom as hd

    colours = [tuple(hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb())
               for item in ds.SegmentSequence]
    for rgb, (_, _, _, expected) in zip(colours, BRATS_SEGMENTS, strict=True):
        assert np.allclose(rgb, expected, atol=2)
    # The other conventions read and write the same segments.
    assert np.array_equal(read_seg(out, series, convention="brats2023"), np.where(native == 4, 3, native))


def test_seg_writes_only_the_labels_present(t1ce_series, tmp_path):
    series, image, native = t1ce_series
    edema_only = np.where(native > 0, 2, 0).astype(np.uint8)
    out = write_seg(nib.Nifti1Image(edema_only, image.affine), series, tmp_path / "edema.dcm")
    ds = pydicom.dcmread(out)
    assert [item.SegmentLabel for item in ds.SegmentSequence] == ["Peritumoral edema"]
    assert np.array_equal(read_seg(out, series), edema_only)


def test_seg_refuses_what_it_cannot_write(t1ce_series, tmp_path):
    series, image, native = t1ce_series
    with pytest.raises(DataError, match="not on the grid"):
        write_seg(nib.Nifti1Image(native, image.affine @ np.diag([1, 1, 1.1, 1])), series, tmp_path / "a.dcm")
    with pytest.raises(DataError, match="shape"):
        write_seg(native[:, :, :-1], series, tmp_path / "b.dcm")
    with pytest.raises(DataError, match="no tumour"):
        write_seg(np.zeros_like(native), series, tmp_path / "c.dcm")
    with pytest.raises(DataError, match="label map"):
        write_seg(np.where(native == 4, 7, native), series, tmp_path / "d.dcm")
    out = write_seg(native, series, tmp_path / "e.dcm")
    with pytest.raises(OutputExistsError):
        write_seg(native, series, out)
    other = write_series(image, tmp_path / "other")  # same pixels, another series
    with pytest.raises(DataError, match="does not reference"):
        read_seg(out, other)
