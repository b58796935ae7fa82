"""Render a montage PNG of one case, or of two cases side by side, to judge how they look.

For each case: axial, coronal and sagittal slices through the tumour centre (the brain centre when the case
has no label) of FLAIR, T1, T1ce and T2, and the labels over FLAIR (red necrotic/non-enhancing core, green
edema, yellow enhancing). Slices are shown in radiological convention (patient's left on the right,
anterior up in axial slices, superior up otherwise), assuming the LPS voxel order of BraTS files.

    python scripts/montage.py CASE_A [CASE_B] -o montage.png

A case is a case folder in any layout agsevnet reads (a dataset folder shows its first case).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from agsevnet.data.io import load_case  # noqa: E402
from agsevnet.data.layouts import discover  # noqa: E402

COLUMNS = ("FLAIR", "T1", "T1ce", "T2", "labels")
VIEWS = ("axial", "coronal", "sagittal")
LABEL_COLOURS = ((0.0, 0.0, 0.0, 0.0), (0.95, 0.15, 0.1, 0.6), (0.2, 0.85, 0.2, 0.45), (1.0, 0.9, 0.0, 0.7))
LABEL_NAMES = ("necrotic / non-enhancing core", "edema", "enhancing tumour")


def load(path: Path) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(case id, images float32 (4, X, Y, Z), internal labels or None) of the case at ``path`` (the first one
    if ``path`` holds several)."""
    specs = discover(path)
    if len(specs) > 1:
        print(f"note: {path} holds {len(specs)} cases; showing {specs[0].case_id} (pass a case folder to choose)")
    case = load_case(specs[0])
    return case.case_id, case.images, case.label


def centre_of(images: np.ndarray, labels: np.ndarray | None) -> tuple[int, int, int]:
    """The voxel the slices go through: the centroid of the largest tumour, else of the brain."""
    if labels is not None and labels.any():
        components, n = ndimage.label(labels > 0)
        mask = components == 1 + np.argmax(ndimage.sum_labels(labels > 0, components, range(1, n + 1)))
    else:
        mask = images.max(axis=0) > 0
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))


def view(volume: np.ndarray, name: str, centre: tuple[int, int, int]) -> np.ndarray:
    """A 2D slice oriented for display with imshow(origin='upper')."""
    x, y, z = centre
    if name == "axial":
        return volume[:, :, z].T  # rows: anterior (j=0) at the top; columns: patient's left on the right
    if name == "coronal":
        return volume[:, y, :].T[::-1]  # superior at the top
    return volume[x, :, :].T[::-1]  # sagittal: anterior on the left, superior at the top


def render(cases: list[tuple[str, np.ndarray, np.ndarray | None]], out: Path, dpi: int = 80) -> None:
    ncol = len(COLUMNS) * len(cases)
    x, y, z = cases[0][1].shape[1:]
    heights = [y / x, z / x, z / y]  # panel height per unit width: axial, coronal, sagittal
    fig, axes = plt.subplots(
        len(VIEWS), ncol, figsize=(1.9 * ncol, 1.9 * sum(heights) + 0.9), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    cmap = ListedColormap(LABEL_COLOURS)
    for k, (name, images, labels) in enumerate(cases):
        centre = centre_of(images, labels)
        brain = images.max(axis=0) > 0
        windows = [np.percentile(images[m][brain], [0.5, 99.5]) if brain.any() else (0, 1) for m in range(4)]
        for r, v in enumerate(VIEWS):
            for c, col in enumerate(COLUMNS):
                ax = axes[r, k * len(COLUMNS) + c]
                ax.set_xticks([])
                ax.set_yticks([])
                m = 0 if col == "labels" else c
                ax.imshow(view(images[m], v, centre), cmap="gray", vmin=0, vmax=windows[m][1], interpolation="nearest")
                if col == "labels" and labels is not None:
                    ax.imshow(view(labels, v, centre), cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
                if r == 0:
                    ax.set_title(col if col != "labels" or labels is not None else "no labels", fontsize=10)
                if c == 0:
                    ax.set_ylabel(v, fontsize=10)
        x0 = axes[0, k * len(COLUMNS)].get_position().x0
        x1 = axes[0, (k + 1) * len(COLUMNS) - 1].get_position().x1
        fig.text((x0 + x1) / 2, 0.985, f"{name}  (slices through voxel {centre})", ha="center", va="top", fontsize=11)
    fig.legend(
        handles=[Patch(color=col[:3], label=lab) for col, lab in zip(LABEL_COLOURS[1:], LABEL_NAMES, strict=True)],
        loc="lower center",
        ncol=3,
        fontsize=9,
        frameon=False,
    )
    fig.subplots_adjust(left=0.02, right=0.99, top=0.9, bottom=0.08, wspace=0.03, hspace=0.03)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", type=Path, help="one or two case folders")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args()
    if len(args.cases) > 2:
        parser.error("give one or two cases")
    render([load(p) for p in args.cases], args.output, dpi=args.dpi)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
