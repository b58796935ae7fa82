"""Robustness to acquisition noise: the k-space noise experiment of the paper's Fig. 12 (section 5.2).

For each noise level, every modality of every case is corrupted as an MRI acquisition would be: the 3D volume
is Fourier transformed (``scipy.fft.fftn``, orthonormal), complex white Gaussian noise is added to its k-space,
and the magnitude of the inverse transform is the noisy image. The noisy case is segmented with the checkpoint
(one :class:`~agsevnet.infer.predictor.Predictor`, loaded once) and scored against the ground truth with
:func:`~agsevnet.evaluate.metrics.case_metrics`; the noise-free ("clean") case is the reference level.

**SNR.** The target of each level is the image SNR, defined per modality and case as

    SNR = mean intensity of the clean volume over the brain mask / sigma,

where the brain mask is the union over the four modalities of the non-zero voxels (BraTS is skull-stripped,
zero outside the brain) and sigma is the standard deviation of the real and of the imaginary part of the
complex noise *in the image domain*. The orthonormal FFT is unitary, so k-space noise of standard deviation
sigma per component is image-domain noise of exactly that standard deviation (Parseval); where the signal is
well above the noise, the magnitude image's noise then has standard deviation sigma too (it is Rician, with a
bias on dark tissue at low SNR). The noise is added on top of the noise the images already hold (real scans,
and phantoms, are not noise-free), so SNR 40 means "this much noise added", not "a total SNR of 40". The
``measured_snr`` reported per level is the mean over cases and modalities of mean(clean brain) /
std(noisy - clean over the brain), which checks the noise that reached the images.

**Background.** The noise spreads over the whole field of view, as in a real acquisition. The brain mask is
then restored by default (``restore_background=True``: voxels outside the clean brain mask set back to 0), as
the skull stripping of a real pipeline would do after acquisition: agsevnet's preprocessing crops to the
non-zero voxels and z-scores over them, so without it a noisy background would change the crop and the
normalisation statistics, and the experiment would measure that mismatch rather than the effect of noise on
the tumour's appearance. ``restore_background=False`` (``--noisy-background``) keeps the noisy background.

**Determinism.** The noise of (case, level) is drawn from ``SeedSequence([seed, crc32(case id), SNR x 1000])``:
a run is reproducible for a seed, and a case's noise at a level does not depend on the other cases or levels.

**Files** in the output folder (each written atomically; a run that stops is resumed from its progress file
when started again with the same settings):

- ``robustness.csv``: one row per level (``clean`` first): ``level, snr, measured_snr, cases, Dice_ET,
  Dice_WT, Dice_TC, Dice_mean`` (means over the cases);
- ``robustness.json``: the settings (with the SNR definition), the table and every case's 12 BraTS metrics;
- ``robustness.png``: Dice per region (mean +- standard deviation over the cases) against the noise level;
- ``robustness_progress.jsonl`` while the run goes on: one line per finished (level, case), where a stopped run
  resumes; removed once the files above are written.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from agsevnet import REGIONS, __version__
from agsevnet.errors import ConfigError, DataError, OutputExistsError
from agsevnet.evaluate.summary import region_mean
from agsevnet.fsutil import atomic_path, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from agsevnet.infer.predictor import Predictor

FORMAT = "agsevnet-robustness"
FORMAT_VERSION = 1
DEFAULT_SNRS: tuple[float, ...] = (40.0, 30.0, 20.0, 15.0, 10.0, 5.0)
"""The noise levels (image SNR, see the module docstring), least noisy first."""
CLEAN = "clean"
CSV_NAME, JSON_NAME, PLOT_NAME, PROGRESS_NAME = (
    "robustness.csv", "robustness.json", "robustness.png", "robustness_progress.jsonl")
TABLE_COLUMNS: tuple[str, ...] = (
    "level", "snr", "measured_snr", "cases", *(f"Dice_{r}" for r in REGIONS), "Dice_mean")
SNR_DEFINITION = (
    "image SNR per modality and case: mean clean intensity over the brain mask (non-zero voxels of any modality) / "
    "standard deviation of each component of the complex Gaussian noise in the image domain (equal to that of the "
    "k-space noise: orthonormal FFT); noise added on top of the images' own")


# ------------------------------------------------------------------------------------------------- noise


def noise_sigma(volume: np.ndarray, snr: float, mask: np.ndarray) -> float:
    """The noise standard deviation that gives ``volume`` the image SNR ``snr`` (mean over ``mask`` / sigma)."""
    if not snr > 0:
        raise ConfigError(f"an SNR must be positive, got {snr}")
    values = volume[mask]
    return float(values.mean(dtype=np.float64)) / float(snr) if values.size else 0.0


def add_kspace_noise(
    volume: np.ndarray,
    snr: float,
    rng: np.random.Generator,
    *,
    mask: np.ndarray | None = None,
    restore_background: bool = True,
) -> np.ndarray:
    """``volume`` (X, Y, Z) with complex Gaussian noise added to its k-space at image SNR ``snr``; float32.

    ``mask``: the brain mask the SNR is defined over and, with ``restore_background``, the voxels kept (the
    others are set to 0); default: the non-zero voxels of ``volume``.
    """
    import scipy.fft

    volume = np.asarray(volume, dtype=np.float32)
    mask = volume != 0 if mask is None else np.asarray(mask, dtype=bool)
    sigma = noise_sigma(volume, snr, mask)
    kspace = scipy.fft.fftn(volume.astype(np.complex64), norm="ortho", workers=-1)
    real, imag = (rng.standard_normal(volume.shape, dtype=np.float32) for _ in range(2))
    kspace += np.complex64(sigma) * (real + 1j * imag)
    noisy = np.abs(scipy.fft.ifftn(kspace, norm="ortho", workers=-1)).astype(np.float32)
    if restore_background:
        noisy[~mask] = 0
    return noisy


def noisy_images(
    images: np.ndarray, snr: float, rng: np.random.Generator, *, restore_background: bool = True,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Every modality of ``images`` (C, X, Y, Z) through :func:`add_kspace_noise` at ``snr``, each with its own
    sigma (from its own mean brain intensity) over the shared brain mask (non-zero in any modality; pass
    ``mask`` when it is already computed)."""
    if mask is None:
        from agsevnet.preprocess import brain_mask

        mask = brain_mask(images)
    return np.stack([add_kspace_noise(channel, snr, rng, mask=mask, restore_background=restore_background)
                     for channel in images])


def measured_snr(clean: np.ndarray, noisy: np.ndarray, mask: np.ndarray) -> float:
    """mean(clean over ``mask``) / std(noisy - clean over ``mask``) of one volume (inf when they are equal)."""
    diff = (np.asarray(noisy, dtype=np.float64) - np.asarray(clean, dtype=np.float64))[mask]
    std = float(diff.std()) if diff.size else 0.0
    mean = float(np.asarray(clean)[mask].mean(dtype=np.float64)) if diff.size else 0.0
    return mean / std if std > 0 else float("inf")


def level_rng(seed: int, case_id: str, snr: float) -> np.random.Generator:
    """The generator of the noise of one case at one level (see "Determinism" in the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode()), round(snr * 1000)]))


def level_name(snr: float | None) -> str:
    """``"clean"`` or the SNR as text (``"40"``, ``"7.5"``)."""
    return CLEAN if snr is None else f"{snr:g}"


# ------------------------------------------------------------------------------------------------- summary


def summarize_levels(results: Sequence[Mapping[str, Any]], levels: Sequence[float | None]) -> list[dict[str, Any]]:
    """One row per level (in ``levels`` order): mean Dice per region and of the three regions, their standard
    deviations over the cases (``std`` entry), the number of cases and the mean measured SNR."""
    rows = []
    for snr in levels:
        name = level_name(snr)
        mine = [r for r in results if r["level"] == name]
        if not mine:
            continue
        dice = {region: np.array([r["metrics"][f"Dice_{region}"] for r in mine]) for region in REGIONS}
        dice["mean"] = region_mean(dice)
        snrs = [r["measured_snr"] for r in mine if r["measured_snr"] is not None]
        rows.append({
            "level": name,
            "snr": snr,
            "measured_snr": float(np.mean(snrs)) if snrs else None,
            "cases": len(mine),
            **{f"Dice_{k}": float(v.mean()) for k, v in dice.items()},
            "std": {f"Dice_{k}": float(v.std()) for k, v in dice.items()},
        })
    return rows


def table_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-level table as CSV (:data:`TABLE_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                         for c in TABLE_COLUMNS])
    return buffer.getvalue()


def table(rows: Sequence[Mapping[str, Any]], title: str | None = None):
    """A rich Table of the per-level rows (mean Dice per region and their mean)."""
    from rich.table import Table

    out = Table(title=title)
    out.add_column("level")
    out.add_column("measured SNR", justify="right")
    out.add_column("cases", justify="right")
    for region in (*REGIONS, "mean"):
        out.add_column(f"Dice {region}", justify="right")
    for row in rows:
        measured = "" if row["measured_snr"] is None else f"{row['measured_snr']:.1f}"
        out.add_row(row["level"] if row["snr"] is None else f"SNR {row['level']}", measured, str(row["cases"]),
                    *(f"{row[f'Dice_{r}']:.4f}" for r in (*REGIONS, "mean")))
    return out


def plot_robustness(rows: Sequence[Mapping[str, Any]], out: str | Path | IO[bytes], *, title: str = "",
                    dpi: int = 100) -> None:
    """Dice per region (mean +- standard deviation over the cases) and their mean against the noise level, the
    clean level first and shaded, noisier to the right; one PNG to a path (atomically) or a binary file object."""
    from matplotlib import patheffects
    from matplotlib.figure import Figure

    from agsevnet.report.figures import REGION_COLOURS, REGION_NAMES

    if not rows:
        raise ValueError("no levels to plot")
    x = np.arange(len(rows))
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if rows[0]["snr"] is None:
        ax.axvspan(-0.4, 0.4, color="#d9e6f2", zorder=0)
    outline = [patheffects.withStroke(linewidth=3.2, foreground="#333333")]
    for offset, region in zip((-0.1, 0.0, 0.1), ("WT", "TC", "ET"), strict=True):
        mean = np.array([row[f"Dice_{region}"] for row in rows])
        std = np.array([row["std"][f"Dice_{region}"] for row in rows])
        colour = REGION_COLOURS[region]
        # Error bars side by side (offset) so that the three regions' spreads stay apart.
        ax.errorbar(x + offset, mean, yerr=[mean - np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1) - mean],
                    fmt="none", ecolor=colour, elinewidth=1.2, capsize=3, alpha=0.9,
                    path_effects=outline if region == "ET" else None)
        ax.plot(x + offset, mean, marker="o", color=colour, linewidth=2, markersize=6, markeredgecolor="#333333",
                path_effects=outline if region == "ET" else None, label=REGION_NAMES[region])
    ax.plot(x, [row["Dice_mean"] for row in rows], linestyle="--", color="black", linewidth=1.3, marker="s",
            markersize=4, label="mean of the three")
    ax.set_xticks(x, ["clean\n(no noise added)" if row["snr"] is None else row["level"] for row in rows])
    ax.set_xlim(-0.5, len(rows) - 0.5)
    # Zoomed on the data (to the tenth below the lowest mean - std): small drops stay visible when Dice is high.
    low = min(min(row[f"Dice_{r}"] - row["std"][f"Dice_{r}"] for r in REGIONS) for row in rows)
    ax.set_ylim(max(0.0, np.floor(10 * (low - 0.02)) / 10), 1.01)
    ax.set_xlabel("image SNR of the added k-space noise (noisier to the right)")
    ax.set_ylabel("Dice (mean ± std over cases)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    n = max(row["cases"] for row in rows)
    ax.set_title(title or f"Segmentation under k-space noise (n = {n} case{'s' if n != 1 else ''})", fontsize=11)
    if isinstance(out, (str, Path)):
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    else:
        fig.savefig(out, format="png", dpi=dpi)


# ------------------------------------------------------------------------------------------------- the run


def _read_progress(path: Path, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The results a stopped run with the same ``settings`` left in ``path`` (a torn last line is dropped)."""
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("settings") != json.loads(json.dumps(settings)):
        raise OutputExistsError("holds the progress of a robustness run with other settings (or is unreadable); "
                                "pass --overwrite to start again", path)
    results = []
    for line in lines[1:]:
        try:
            results.append(json.loads(line))
        except ValueError:
            break  # the line being written when the run stopped
    return results


def run_robustness(
    data: str | Path,
    checkpoint: str | Path | Predictor,
    out_dir: str | Path,
    *,
    snrs: Sequence[float] = DEFAULT_SNRS,
    seed: int = 0,
    restore_background: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    **predictor_options: Any,
) -> dict[str, Any]:
    """Run the experiment on the labelled cases of ``data`` (any layout) and write its files to ``out_dir``.

    ``checkpoint``: a checkpoint path or a ready :class:`~agsevnet.infer.predictor.Predictor`;
    ``predictor_options``: the Predictor settings (``device``, ``precision``, ...) for a path. Returns the JSON
    record (``settings``, ``levels``: the table rows, ``cases``: every (level, case) result). Existing result
    files raise :class:`OutputExistsError` unless ``overwrite``; a stopped run with the same settings resumes.
    """
    from tqdm.auto import tqdm

    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.metrics import case_metrics
    from agsevnet.infer.predictor import Predictor
    from agsevnet.preprocess import brain_mask

    data, out_dir = Path(data), Path(out_dir)
    snrs = [float(s) for s in snrs]
    if not snrs:
        raise ConfigError("give at least one SNR level")
    bad = [s for s in snrs if not (np.isfinite(s) and s > 0)]
    if bad:
        raise ConfigError(f"SNR levels must be positive numbers, got {bad}")
    if len(set(snrs)) != len(snrs):
        raise ConfigError(f"SNR levels must differ, got {snrs}")
    outputs = [out_dir / name for name in (CSV_NAME, JSON_NAME, PLOT_NAME)]
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError("exists (pass --overwrite to replace it)", existing[0])
    specs = discover(data)
    unlabelled = [spec.case_id for spec in specs if not spec.has_label]
    if unlabelled:
        raise DataError(f"the robustness experiment needs ground truth; case(s) without a label file: "
                        f"{', '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}", data)

    if isinstance(checkpoint, Predictor):
        if predictor_options:
            raise TypeError("Predictor options cannot be given with a ready Predictor")
        predictor, model_name, step = checkpoint, "<in-memory model>", None
    else:
        from agsevnet.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        predictor = Predictor.from_checkpoint(ckpt, **predictor_options)
        model_name, step = str(Path(checkpoint).resolve()), int(ckpt.get("step", 0))
        del ckpt
    settings = {"data": str(data.resolve()), "checkpoint": model_name, "checkpoint_step": step, "snrs": snrs,
                "seed": int(seed), "restore_background": bool(restore_background), "snr_definition": SNR_DEFINITION}

    progress_path = out_dir / PROGRESS_NAME
    results: list[dict[str, Any]] = []
    if progress_path.exists() and not overwrite:
        results = _read_progress(progress_path, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not results:
        write_text_atomic(progress_path, json.dumps({"format": f"{FORMAT}-progress", "settings": settings}) + "\n")
    levels: list[float | None] = [None, *snrs]
    wanted = {(level_name(snr), spec.case_id) for snr in levels for spec in specs}
    results = [r for r in results if (r["level"], r["case"]) in wanted]  # cases since removed from DATA: dropped
    done = {(r["level"], r["case"]) for r in results}
    total = len(levels) * len(specs)
    bar = tqdm(total=total, initial=len(done), desc="robustness", unit="segmentation", disable=not progress,
               dynamic_ncols=True)
    if done and progress:
        bar.write(f"resuming: {len(done)} of {total} (level, case) results found in {progress_path}")
    try:
        with progress_path.open("a") as log:
            for spec in specs:
                todo = [snr for snr in levels if (level_name(snr), spec.case_id) not in done]
                if not todo:
                    continue
                case = load_case(spec)
                mask = brain_mask(case.images)
                for snr in todo:
                    bar.set_postfix_str(f"{spec.case_id} {'clean' if snr is None else f'SNR {snr:g}'}")
                    if snr is None:
                        images, measured = case.images, None
                    else:
                        images = noisy_images(case.images, snr, level_rng(seed, spec.case_id, snr),
                                              restore_background=restore_background, mask=mask)
                        measured = float(np.mean([measured_snr(c, n, mask) for c, n in zip(case.images, images)]))
                    labels = predictor.predict_case(replace(case, images=images)).labels
                    result = {"level": level_name(snr), "snr": snr, "case": spec.case_id, "measured_snr": measured,
                              "metrics": case_metrics(labels, case.label, case.geometry.spacing)}
                    log.write(json.dumps(result) + "\n")
                    log.flush()
                    results.append(result)
                    bar.update(1)
    finally:
        bar.close()

    level_index = {level_name(s): i for i, s in enumerate(levels)}
    case_index = {spec.case_id: i for i, spec in enumerate(specs)}
    results.sort(key=lambda r: (level_index[r["level"]], case_index[r["case"]]))
    rows = summarize_levels(results, levels)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "agsevnet_version": __version__,
              "settings": settings, "levels": rows, "cases": results}
    write_text_atomic(out_dir / CSV_NAME, table_csv_text(rows))
    write_json_atomic(out_dir / JSON_NAME, record)
    plot_robustness(rows, out_dir / PLOT_NAME)
    progress_path.unlink()  # everything it held is in the JSON now
    return record
