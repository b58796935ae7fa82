"""Quality checks of a prepared case a user can read: figures, warnings, one line, and a picture."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

BRAIN_ML = (800.0, 2000.0)  # a brain outside this range: a failed extraction or registration
MAX_SHIFT_MM = 30.0  # a sequence that moved more than this relative to the T1ce
MAX_ROTATION_DEG = 20.0
MIN_COVERAGE = 0.9  # the share of the brain a sequence's field of view must cover
MIN_ATLAS_DICE = 0.8  # the brain mask against the atlas brain after the affine registration


def warnings_for(qc: Mapping[str, Any]) -> list[str]:
    """The checks out of their usual range, as short sentences."""
    out = []
    ml = qc["brain_volume_ml"]
    if not BRAIN_ML[0] <= ml <= BRAIN_ML[1]:
        out.append(f"brain volume {ml:.0f} ml is outside {BRAIN_ML[0]:.0f}-{BRAIN_ML[1]:.0f} ml (brain extraction "
                   "or registration failed?)")
    if qc.get("atlas_dice") is not None and qc["atlas_dice"] < MIN_ATLAS_DICE:
        out.append(f"the brain overlaps the atlas brain with Dice {qc['atlas_dice']:.2f} only (< {MIN_ATLAS_DICE}): "
                   "atlas registration failed?")
    for m, mv in qc["motion"].items():
        if mv["translation_mm"] > MAX_SHIFT_MM or mv["rotation_deg"] > MAX_ROTATION_DEG:
            out.append(f"{m} moved {mv['translation_mm']:.0f} mm / {mv['rotation_deg']:.0f} deg relative to the "
                       f"T1ce (more than {MAX_SHIFT_MM:.0f} mm or {MAX_ROTATION_DEG:.0f} deg): check its alignment")
    for m, share in qc["coverage"].items():
        if share < MIN_COVERAGE:
            out.append(f"{m} covers {100 * share:.0f}% of the brain only (< {100 * MIN_COVERAGE:.0f}%): the rest is "
                       "0 in the prepared file")
    return out


def summary_line(case_id: str, qc: Mapping[str, Any], seconds: float) -> str:
    moved = ", ".join(f"{m} {v['translation_mm']:.0f} mm {v['rotation_deg']:.0f} deg" for m, v in qc["motion"].items())
    warn = f"; {len(qc['warnings'])} warning(s): " + "; ".join(qc["warnings"]) if qc["warnings"] else "; checks ok"
    return (f"{case_id}: brain {qc['brain_volume_ml']:.0f} ml, atlas Dice {qc['atlas_dice']:.2f}, "
            f"T1ce->atlas MI {qc['atlas_metric']:.3f}, moved to T1ce: {moved}; {seconds:.0f} s{warn}")


def save_picture(path: Path, images: Mapping[str, np.ndarray], mask: np.ndarray, title: str) -> Path:
    """Three orthogonal slices (through the brain's centre) of each prepared sequence with the brain outline.
    Displayed as radiologists look at BraTS files (axial and coronal: patient's right on the left, anterior up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agsevnet.fsutil import atomic_path

    idx = np.argwhere(mask)
    centre = idx.mean(axis=0).round().astype(int) if len(idx) else np.array(mask.shape) // 2
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), facecolor="black")
    for row, (name, img) in enumerate(images.items()):
        inside = img[mask] if mask.any() else img.ravel()
        vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
        views = [
            ("axial", img[:, :, centre[2]], mask[:, :, centre[2]]),
            ("coronal", img[:, centre[1], :], mask[:, centre[1], :]),
            ("sagittal", img[centre[0], :, :], mask[centre[0], :, :]),
        ]
        for col, (view, sl, ms) in enumerate(views):
            ax = axes[row, col]
            # BraTS voxel order is LPS: i grows to the patient's left, j to posterior, k upwards.
            # BraTS voxel order: i to the patient's left, j to posterior, k up. Shown radiologically: the patient's
            # right on the viewer's left, anterior (axial) or superior (coronal, sagittal) at the top.
            pic, pm = (sl.T, ms.T) if view == "axial" else (sl.T[::-1], ms.T[::-1])
            ax.imshow(pic, cmap="gray", vmin=0, vmax=vmax or 1.0, interpolation="nearest")
            if pm.any():
                ax.contour(pm.astype(float), levels=[0.5], colors=["#ffcc00"], linewidths=0.7)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(view, color="white", fontsize=9)
            if col == 0:
                ax.text(2, 12, name, color="white", fontsize=10)
    fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black", format="png")
    plt.close(fig)
    return path
