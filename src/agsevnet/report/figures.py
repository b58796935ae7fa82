"""The paper's figures (matplotlib, PNG): metric distributions (Figs 8-9), tumour-centre slices with the
ground truth and the prediction (Figs 10-11), 3D surface renderings, and training curves.

Every function takes arrays (nothing here reads a dataset) and writes one PNG to ``out``: a path (written
atomically) or a binary file object (the HTML report embeds the bytes). Figures are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot's global state, so they
work headless and in worker processes.

Colours are the paper's: whole tumour (WT) green, tumour core (TC) red, enhancing tumour (ET) yellow, drawn
nested (WT, then TC over it, then ET) as translucent fills with solid contours.

Orientation: slices are displayed in the radiological convention whatever the voxel order of the file: the
arrays are reordered to RAS with the affine (:func:`nibabel.orientations.io_orientation`, no resampling),
then axial and coronal slices show the patient's right on the viewer's left, sagittal slices show anterior on
the left, superior is up, and every panel is labelled with its anatomical directions. Pixels keep their
physical aspect ratio (voxel spacing from the affine).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from agsevnet import REGIONS
from agsevnet.boxes import bounding_slices
from agsevnet.data.labels import region_masks
from agsevnet.fsutil import atomic_path

REGION_COLOURS: dict[str, str] = {"WT": "#2ca02c", "TC": "#e3242b", "ET": "#ffd400"}
REGION_NAMES: dict[str, str] = {"WT": "whole tumour (WT)", "TC": "tumour core (TC)", "ET": "enhancing tumour (ET)"}
DRAW_ORDER: tuple[str, ...] = ("WT", "TC", "ET")  # outermost first: inner regions are drawn over outer ones
METRIC_LABELS: dict[str, str] = {
    "Dice": "Dice",
    "Sensitivity": "Sensitivity",
    "Specificity": "Specificity",
    "Hausdorff95": "Hausdorff95 (mm)",
}
ORIENTATIONS: tuple[str, ...] = ("axial", "coronal", "sagittal")

Out = str | Path | IO[bytes]


# --------------------------------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: Out, dpi: int) -> None:
    """Write ``fig`` as PNG to a path (atomically) or a binary file object."""
    if isinstance(out, (str, Path)):
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    else:
        fig.savefig(out, format="png", dpi=dpi)


def _legend_handles(regions: Sequence[str] = DRAW_ORDER) -> list[Any]:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=REGION_COLOURS[r], edgecolor=REGION_COLOURS[r], alpha=0.7, label=REGION_NAMES[r])
        for r in regions
    ]


def _ras_frame(affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """nibabel's orientation (voxel axes -> RAS axes and flips) of ``affine`` and the spacing along R, A, S."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        ras_spacing[int(target)] = float(spacing[axis])
    return ornt, (ras_spacing[0], ras_spacing[1], ras_spacing[2])


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` with its axes reordered/flipped to RAS (no resampling) and the voxel spacing along them."""
    import nibabel as nib

    ornt, spacing = _ras_frame(affine)
    return nib.orientations.apply_orientation(volume, ornt), spacing


def tumour_centre(gt: np.ndarray | None, pred: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel (in the arrays' order) at the centre of mass of the ground truth's WT, else the prediction's,
    else the volume's centre."""
    from scipy import ndimage

    for labels in (gt, pred):
        if labels is not None and np.any(labels > 0):
            return tuple(int(round(c)) for c in ndimage.center_of_mass(labels > 0))
    reference = gt if gt is not None else pred
    return tuple(s // 2 for s in reference.shape)


def display_slice(volume: np.ndarray, orientation: str, index: int) -> np.ndarray:
    """Slice ``index`` of a RAS volume (:func:`to_ras`) as displayed: rows top to bottom, columns left to right
    (radiological convention, see the module docstring)."""
    plane = {"axial": lambda: volume[:, :, index], "coronal": lambda: volume[:, index, :],
             "sagittal": lambda: volume[index, :, :]}[orientation]()
    # axial (x, y): A up, R left; coronal (x, z): S up, R left; sagittal (y, z): S up, A left.
    return plane.T[::-1, ::-1]


_DIRECTIONS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
_SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
_PLANE_SPACING = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}  # (columns, rows) RAS axes


def _overlay_rgba(labels: np.ndarray, alpha: float) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    masks = region_masks(labels)
    for region in DRAW_ORDER:
        rgba[masks[region]] = to_rgba(REGION_COLOURS[region], alpha)
    return rgba


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[image != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


# --------------------------------------------------------------------------------------------------- figures


def plot_metric_distributions(
    rows: Sequence[Mapping[str, float]], out: Out, *, title: str = "Evaluation", seed: int = 0, dpi: int = 100
) -> None:
    """Scatter + box plots of Dice, sensitivity, specificity and Hausdorff95 for ET, WT and TC (paper Figs 8-9).

    ``rows``: per-case metrics with the keys of :data:`agsevnet.evaluate.metrics.COLUMNS`. One panel per
    metric, the regions on the x axis, each case a jittered point over its region's box (median line, boxes
    at the quartiles, whiskers at 1.5 IQR).
    """
    from agsevnet.evaluate.metrics import METRICS

    rows = list(rows)
    if not rows:
        raise ValueError("no cases to plot")
    rng = np.random.default_rng(seed)
    fig = _new_figure(14, 4.2)
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS, strict=True):
        data = [np.array([float(row[f"{metric}_{region}"]) for row in rows]) for region in REGIONS]
        positions = np.arange(1, len(REGIONS) + 1)
        box = ax.boxplot(data, positions=positions, widths=0.55, showfliers=False, patch_artist=True,
                         medianprops={"color": "black", "linewidth": 1.5})
        for patch, region in zip(box["boxes"], REGIONS, strict=True):
            patch.set_facecolor(REGION_COLOURS[region])
            patch.set_alpha(0.35)
        for pos, values, region in zip(positions, data, REGIONS, strict=True):
            jitter = rng.uniform(-0.17, 0.17, size=values.size)
            ax.scatter(pos + jitter, values, s=16, color=REGION_COLOURS[region], edgecolors="black",
                       linewidths=0.4, zorder=3)
        ax.set_xticks(positions, REGIONS)
        ax.set_xlabel("region")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_title(METRIC_LABELS[metric])
        if metric == "Hausdorff95":
            ax.set_ylim(bottom=0)
        else:  # zoom on the data when every value is high (specificities are all near 1)
            bottom = min(float(np.min(v)) for v in data)
            bottom = 0.0 if bottom < 0.5 else max(0.0, bottom - 0.05 * max(1.0 - bottom, 0.02))
            ax.set_ylim(bottom, 1.0 + 0.04 * (1.0 - bottom))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} (n = {len(rows)} case{'s' if len(rows) != 1 else ''})")
    _save(fig, out, dpi)


def plot_case_overlay(
    image: np.ndarray | None,
    gt: np.ndarray | None,
    pred: np.ndarray | None,
    affine: np.ndarray,
    out: Out,
    *,
    case_id: str,
    dice: Mapping[str, float] | None = None,
    image_name: str = "FLAIR",
    alpha: float = 0.45,
    dpi: int = 80,
) -> None:
    """Slices through the tumour centre in three orientations: image, ground truth, prediction (Figs 10-11).

    ``image`` (3D intensities, or None: a black background), ``gt`` and ``pred`` (internal labels 0-3, either
    may be None, not both) share one voxel grid described by ``affine``. Rows are the axial, coronal and
    sagittal slices through the centre of mass of the ground truth's WT (else the prediction's); columns the
    image alone, the ground truth over it and the prediction over it. ``dice``: ET/WT/TC Dice for the title.
    """
    if gt is None and pred is None:
        raise ValueError("need a ground truth or a prediction to draw")
    reference = gt if gt is not None else pred
    if image is not None and image.shape != reference.shape:
        raise ValueError(f"image shape {image.shape} differs from the labels' {reference.shape}")
    centre = tumour_centre(gt, pred)
    ornt, spacing = _ras_frame(affine)
    ras = {name: to_ras(np.asarray(volume), affine)[0]
           for name, volume in (("image", image), ("gt", gt), ("pred", pred)) if volume is not None}
    ras_centre = [0, 0, 0]
    for axis, (target, flip) in enumerate(ornt):
        ras_centre[int(target)] = centre[axis] if flip > 0 else reference.shape[axis] - 1 - centre[axis]
    # Show the brain (non-zero image) and every labelled voxel, not the empty field of view around them.
    content = np.zeros(ras[next(iter(ras))].shape, dtype=bool)
    for name, volume in ras.items():
        content |= volume != 0
    box = bounding_slices(content, 6) or tuple(slice(0, n) for n in content.shape)
    ras = {name: volume[box] for name, volume in ras.items()}
    ras_centre = [c - b.start for c, b in zip(ras_centre, box, strict=True)]

    columns = [("image", image_name)]
    if gt is not None:
        columns.append(("gt", "ground truth"))
    if pred is not None:
        columns.append(("pred", "prediction"))
    fig = _new_figure(3.1 * len(columns), 9.8)
    axes = fig.subplots(len(ORIENTATIONS), len(columns), squeeze=False)
    vmin, vmax = _window(ras["image"]) if "image" in ras else (0.0, 1.0)
    for r, orientation in enumerate(ORIENTATIONS):
        axis = _SLICE_AXIS[orientation]
        index = ras_centre[axis]
        col_sp, row_sp = (spacing[a] for a in _PLANE_SPACING[orientation])
        planes = {key: display_slice(ras[key], orientation, index) for key in ras}
        background = planes["image"] if "image" in planes else np.zeros(planes[columns[1][0]].shape)
        extent = (0, background.shape[1] * col_sp, background.shape[0] * row_sp, 0)
        left, right, top, bottom = _DIRECTIONS[orientation]
        for c, (key, label) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(background, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
            if key != "image":
                labels = planes[key]
                ax.imshow(_overlay_rgba(labels, alpha), extent=extent, interpolation="nearest")
                masks = region_masks(labels)
                for region in DRAW_ORDER:
                    if masks[region].any():
                        ax.contour(masks[region].astype(np.float32), levels=[0.5], colors=[REGION_COLOURS[region]],
                                   linewidths=0.9, extent=extent, origin="upper")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                over = key != "image" and "image" in ras
                ax.set_title(f"{label} over {image_name}" if over else label, fontsize=10)
            if c == 0:
                ax.set_ylabel(orientation, fontsize=10)
            style = {"color": "white", "fontsize": 8, "fontweight": "bold"}
            ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
            ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)
            ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **style)
            ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)
    if "image" not in ras:
        axes[0][0].text(0.5, 0.4, "no image", transform=axes[0][0].transAxes, ha="center", color="white")
    details = f"slices through voxel {tuple(int(c) for c in centre)}"
    if dice:
        scores = "  ".join(f"{region} {dice[region]:.3f}" for region in REGIONS if region in dice)
        details = f"Dice {scores}    {details}"
    fig.suptitle(f"case {case_id}\n{details}", fontsize=11)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    _save(fig, out, dpi)


def _surface_mesh(mask: np.ndarray, spacing: Sequence[float], max_faces: int):
    """Triangles (n, 3, 3) in mm of a smoothed mask's 0.5 iso-surface, coarsened to about ``max_faces``.

    A region too small or thin for its smoothed mask to reach 0.5 anywhere (a few voxels, a one-voxel rim: the
    smoothing spreads it below the level, and marching cubes then refuses the level) is drawn from the unsmoothed
    mask instead (blocky, but there); an empty mask gives no triangles."""
    from scipy import ndimage
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros((0, 3, 3), dtype=np.float32)
    padded = np.pad(mask.astype(np.float32), 2)  # the zero border keeps 0.5 inside the data range
    smooth = ndimage.gaussian_filter(padded, sigma=0.8)
    volume = smooth if smooth.max() > 0.5 else padded
    # Faces scale with the surface area (voxels^(2/3)); step_size s divides their number by about s^2.
    faces_estimate = 4.0 * np.count_nonzero(mask) ** (2 / 3) * 6
    step = max(1, int(math.ceil(math.sqrt(faces_estimate / max_faces))))
    verts, faces, _normals, _values = marching_cubes(volume, level=0.5, spacing=tuple(spacing), step_size=step)
    verts -= 2 * np.asarray(spacing)  # undo the padding
    return verts[faces]


def plot_surfaces_3d(
    label_maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    out: Out,
    *,
    title: str = "",
    max_faces: int = 12000,
    dpi: int = 80,
) -> None:
    """3D surface renderings (marching cubes) of one or more label maps side by side, e.g.
    ``{"ground truth": gt, "prediction": pred}``: WT translucent green, TC red, ET yellow, in mm of the RAS
    frame (voxel spacing respected), each region coarsened to about ``max_faces`` triangles."""
    from matplotlib.colors import LightSource
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if not label_maps:
        raise ValueError("no label map to render")
    reference = next(iter(label_maps.values()))
    union = np.zeros(reference.shape, dtype=bool)
    for labels in label_maps.values():
        union |= np.asarray(labels) > 0
    fig = _new_figure(4.6 * len(label_maps), 4.8)
    if not union.any():
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no tumour in any label map", ha="center", va="center")
        ax.set_axis_off()
    else:
        ras_union, spacing = to_ras(union, affine)
        box = bounding_slices(ras_union, 1)  # not None: union.any()
        extent = np.array([(s.stop - s.start) * sp for s, sp in zip(box, spacing, strict=True)])
        alphas = {"WT": 0.15, "TC": 0.9, "ET": 0.9}
        light = LightSource(azdeg=315, altdeg=45)
        for i, (name, labels) in enumerate(label_maps.items()):
            ax = fig.add_subplot(1, len(label_maps), i + 1, projection="3d")
            masks = region_masks(to_ras(np.asarray(labels), affine)[0][box])
            # The core is drawn where it does not enhance: an enhancing rim would otherwise hide inside it.
            parts = {"WT": masks["WT"], "TC": masks["TC"] & ~masks["ET"], "ET": masks["ET"]}
            if not masks["WT"].any():
                ax.text2D(0.5, 0.5, "no tumour", transform=ax.transAxes, ha="center", va="center")
            for region in DRAW_ORDER:
                if parts[region].any():
                    mesh = Poly3DCollection(_surface_mesh(parts[region], spacing, max_faces), linewidths=0,
                                            facecolors=REGION_COLOURS[region], alpha=alphas[region], shade=True,
                                            lightsource=light)
                    ax.add_collection3d(mesh)
            for setter, size in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), extent, strict=True):
                setter(0, size)
            ax.set_box_aspect(tuple(extent))  # a copy: matplotlib normalises an array argument in place
            ax.set_xlabel("x (mm, to R)", fontsize=8)
            ax.set_ylabel("y (mm, to A)", fontsize=8)
            ax.set_zlabel("z (mm, to S)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.view_init(elev=20, azim=-60)
            ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    _save(fig, out, dpi)


def plot_training_curves(
    rows: Sequence[Mapping[str, Any]], out: Out, *, title: str = "Training", dpi: int = 90
) -> None:
    """Loss, validation Dice (``val_dice_ET/WT/TC/mean``) and learning rate against the step, from the rows
    of a training ``metrics.csv`` (values may be empty strings or None where a row has no such value)."""

    def series(name: str) -> tuple[np.ndarray, np.ndarray]:
        points = [(float(row["step"]), float(row[name])) for row in rows
                  if row.get(name) not in (None, "") and row.get("step") not in (None, "")]
        arr = np.array(points, dtype=np.float64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    columns = list(rows[0]) if rows else []
    losses = [c for c in columns if "loss" in c.lower()]
    dices = [c for c in ("val_dice_ET", "val_dice_WT", "val_dice_TC", "val_dice_mean") if c in columns]
    available = {"loss": losses, "dice": dices, "lr": ["lr"] if "lr" in columns else []}
    panels = [panel for panel, names in available.items() if names]
    if not panels:
        raise ValueError("no loss, validation Dice or lr column to plot")
    fig = _new_figure(4.6 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "loss":
            for name in losses:
                x, y = series(name)
                ax.plot(x, y, label=name, linewidth=1)
            ax.set_ylabel("loss")
            ax.set_title("training loss")
        elif panel == "dice":
            colours = {"val_dice_ET": REGION_COLOURS["ET"], "val_dice_WT": REGION_COLOURS["WT"],
                       "val_dice_TC": REGION_COLOURS["TC"], "val_dice_mean": "black"}
            for name in dices:
                x, y = series(name)
                ax.plot(x, y, marker="o", markersize=3, label=name.removeprefix("val_dice_"), color=colours[name],
                        linewidth=1.2, markeredgecolor="black", markeredgewidth=0.3)
            ax.set_ylabel("Dice")
            ax.set_ylim(0, 1)
            ax.set_title("validation Dice")
        else:
            x, y = series("lr")
            ax.plot(x, y, color="tab:purple", linewidth=1)
            ax.set_ylabel("learning rate")
            ax.set_title("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel != "lr":
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    _save(fig, out, dpi)
