"""The report's 3D surfaces (report.figures._surface_mesh, plot_surfaces_3d) on regions that marching cubes on the
smoothed mask cannot draw: a few voxels, a one-voxel sheet, an empty or constant prediction. The demo's report
failed on such a case ("Surface level must be within volume data range": a 21-voxel enhancing region of a 32^3
phantom's ground truth never reaches 0.5 once smoothed)."""

from __future__ import annotations

import numpy as np
import pytest

from agsevnet.data.labels import from_internal
from agsevnet.report import figures
from helpers import run_cli
from test_evaluate_cli import AFFINE, save
from test_report import PNG_SIGNATURE, assert_png_file, data_uris

SHAPE = (24, 24, 16)


def _tiny_tumour() -> np.ndarray:
    """Edema with a one-voxel-thick core sheet and a two-voxel enhancing part (internal labels)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:16, 6:16, 4:10] = 2
    labels[8:13, 8:13, 7] = 1  # a sheet
    labels[10:12, 10, 6] = 3  # two voxels
    return labels


@pytest.mark.parametrize("voxels", [[(5, 5, 5)], [(5, 5, 4), (5, 5, 5), (5, 5, 6)],
                                    [(5, y, z) for y in range(4, 7) for z in range(4, 7)]])
def test_surface_mesh_of_a_region_too_small_to_survive_smoothing(voxels):
    mask = np.zeros((10, 10, 10), bool)
    for v in voxels:
        mask[v] = True
    tri = figures._surface_mesh(mask, (1.0, 2.0, 1.0), max_faces=1000)
    assert tri.shape[1:] == (3, 3) and len(tri) > 0
    points = tri.reshape(-1, 3)
    lo, hi = np.argwhere(mask).min(axis=0), np.argwhere(mask).max(axis=0)
    # around the voxels, in mm: within half a voxel of them
    assert np.all(points >= (lo - 0.5) * (1, 2, 1) - 1e-6) and np.all(points <= (hi + 0.5) * (1, 2, 1) + 1e-6)
    assert figures._surface_mesh(np.zeros((4, 4, 4), bool), (1, 1, 1), 100).shape == (0, 3, 3)


def test_surfaces_of_tiny_regions_and_empty_or_constant_predictions(tmp_path, monkeypatch):
    from mpl_toolkits.mplot3d.axes3d import Axes3D

    notes: list[str] = []
    text2d = Axes3D.text2D

    def recording(self, x, y, s, *args, **kwargs):
        notes.append(s)
        return text2d(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes3D, "text2D", recording)
    gt = _tiny_tumour()
    for name, pred in (("empty", np.zeros(SHAPE, np.uint8)), ("constant", np.full(SHAPE, 2, np.uint8)),
                       ("tiny", gt)):
        notes.clear()
        out = tmp_path / f"{name}.png"
        figures.plot_surfaces_3d({"ground truth": gt, "prediction": pred}, AFFINE, out, title=name)
        assert_png_file(out)
        assert notes == (["no tumour"] if name == "empty" else [])  # the empty panel says so


def test_report_builds_with_an_empty_prediction(tmp_path):
    save(tmp_path / "gt" / "case.nii.gz", from_internal(_tiny_tumour(), "brats2020"))
    save(tmp_path / "pred" / "case.nii.gz", np.zeros(SHAPE, np.uint8))
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(tmp_path / "e.json")]) == 0
    assert run_cli(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert 'alt="3D rendering of case"' in html and "not drawn" not in html
    # (not test_report.assert_self_contained: its case-insensitive "http" check also scans the images' base64,
    # where those four letters turned up by chance in this report)
    assert all(png[:8] == PNG_SIGNATURE for png in data_uris(html))
