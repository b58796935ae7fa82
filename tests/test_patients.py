"""Patients, not files: cases holding the same scan count once (agsevnet.data.patients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_one_id_per_digest_in_the_callers_order():
    from agsevnet.data.patients import unique_patients

    digests = {"b": "x", "a": "x", "c": "y", "d": None, "e": None}
    kept, copies = unique_patients(["c", "b", "d", "a", "e"], digests.get)
    assert kept == ["c", "d", "a", "e"]  # "a" < "b" is kept; unknown digests are their own patients
    assert copies == {"a": ["b"]}


def test_identical_cached_scans_count_as_one_patient(tmp_path: Path):
    """With the preprocessing cache's content hash (what the trainer uses), the BraTS 2021 and 2023 copies of one
    scan are one patient."""
    from agsevnet.data.case import Case, CaseSpec
    from agsevnet.data.patients import unique_patients
    from agsevnet.preprocess import _write_cached, load_cached, preprocess_case
    from agsevnet.synth.phantom import make_phantom, phantom_geometry

    def case(seed: int, case_id: str) -> Case:
        shape = (32, 32, 32)
        images, labels = make_phantom(seed, shape)
        spec = CaseSpec(case_id=case_id, scheme="files", images={}, label=None, label_convention="brats2020")
        return Case(spec=spec, images=images, label=labels, geometry=phantom_geometry(shape))

    for seed, case_id in ((3, "BraTS2021_00000"), (3, "BraTS-GLI-00000-000"), (9, "Other")):
        pp = preprocess_case(case(seed, case_id))
        pp.meta["sources"] = []
        _write_cached(pp, tmp_path / case_id)
    ids = ["BraTS2021_00000", "Other", "BraTS-GLI-00000-000"]
    kept, copies = unique_patients(ids, lambda c: load_cached(tmp_path, c).meta["image_sha1"])
    assert kept == ["Other", "BraTS-GLI-00000-000"]
    assert copies == {"BraTS-GLI-00000-000": ["BraTS2021_00000"]}
    assert not np.array_equal(load_cached(tmp_path, "Other").image, load_cached(tmp_path, "BraTS2021_00000").image)
