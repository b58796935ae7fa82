"""Synthetic BraTS-like cases ("phantoms") for the demo, the tests and anyone without real data.

A phantom is a skull-stripped, head-shaped brain on the BraTS grid (240x240x155 at 1 mm, the LPS affine of
the real files as nibabel reads it): cerebrum with cortex (gyri and sulci), white matter, deep grey matter,
CSF (ventricles, sulci, the interhemispheric and Sylvian fissures), cerebellum and brainstem, vessels
(cortical veins, sagittal sinus, choroid plexus), sometimes white-matter hyperintensities, and one or two
gliomas: an irregular necrotic core inside an enhancing rim inside edema, sometimes with non-enhancing
solid parts. Each of the four modalities (FLAIR, T1, T1ce, T2) has its own tissue contrasts (as in real
scans: edema bright on FLAIR and T2, the rim bright on T1ce, the core dark on T1 and T1ce, CSF dark on FLAIR
and bright on T2, WM brighter than GM on T1), intensity scale (int16 range of the real files), smooth
multiplicative bias field and Rician noise. Intensities are exact zeros outside the brain, unless
``head=True`` wraps the brain in a head (:mod:`agsevnet.synth.head`); :mod:`agsevnet.synth.acquisition`
acquires each sequence on its own tilted, thick-sliced grid as a scanner would (``write_phantom_dataset(...,
clinical=True)``).

Everything is generated in a physical frame (millimetres of a 240x240x155 volume), so ``shape`` scales the
whole brain: a 64^3 phantom is a small brain with the same structure. Smooth random fields are made in the
Fourier domain (only the low frequencies are drawn), which is what keeps a full-size case at 1-2 s.
:func:`make_phantom_with_tissues` also returns the ground-truth tissue map.

``make_phantom(seed)`` is deterministic for a seed; ``write_phantom_dataset`` writes cases in any of the
layouts agsevnet reads (BraTS 2018-2021, BraTS 2023+, MSD Task01, nnU-Net raw).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.special import expit

from agsevnet import MODALITIES, __version__
from agsevnet.boxes import bounding_slices
from agsevnet.data.case import Geometry
from agsevnet.data.labels import from_internal
from agsevnet.data.nifti import save_labels, save_nifti
from agsevnet.errors import ConfigError, OutputExistsError
from agsevnet.fsutil import write_json_atomic
from agsevnet.synth.acquisition import CLINICAL_VOXEL_SIZE, AcquiredSequence, acquire_case, acquire_labels

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
"""The BraTS grid (1 mm isotropic)."""

BRATS_AFFINE: np.ndarray = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
"""The affine of the real BraTS files (LPS as nibabel reads it), qform and sform code 1."""

NAMINGS: tuple[str, ...] = ("brats2020", "brats2023", "msd", "nnunet")
"""Layouts :func:`write_phantom_dataset` can write."""

# Tissue classes of the phantom.
_BG, _CSF, _GM, _WM, _DGM, _VESSEL, _WMH, _EDEMA, _NONENH, _ENH, _NECR = range(11)
_N_CLASSES = 11
TISSUES: dict[str, int] = {
    "background": _BG,
    "csf": _CSF,
    "grey_matter": _GM,
    "white_matter": _WM,
    "deep_grey_matter": _DGM,
    "vessel": _VESSEL,
    "wm_hyperintensity": _WMH,
    "edema": _EDEMA,
    "non_enhancing": _NONENH,
    "enhancing": _ENH,
    "necrosis": _NECR,
    # outside the brain, with head=True (agsevnet.synth.head)
    "subarachnoid_csf": 11,
    "bone": 12,
    "marrow": 13,
    "fat": 14,
    "skin": 15,
}
"""Values of the tissue map of :func:`make_phantom_with_tissues` (the last five only with ``head=True``)."""
# Internal segmentation label of each class (0 bg, 1 necrotic/non-enhancing core, 2 edema, 3 enhancing).
_CLASS_LABEL = np.array([0, 0, 0, 0, 0, 0, 0, 2, 1, 3, 1, 0, 0, 0, 0, 0], dtype=np.uint8)

# Intensity of each class relative to white matter, per modality (FLAIR, T1, T1ce, T2); jittered per case.
# Ratios follow the real cases in ../shared/data/brats-real (medians per label over normal-appearing brain).
# Vessels and white-matter hyperintensities are there so that no single threshold finds the tumour: vessels
# enhance like the tumour rim, periventricular caps and small WM lesions are bright on FLAIR like edema.
_CONTRAST = np.array(
    [
        # FLAIR  T1    T1ce  T2
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.22, 0.35, 0.38, 3.60],  # CSF
        [1.22, 0.76, 0.80, 1.40],  # grey matter
        [1.00, 1.00, 1.00, 1.00],  # white matter
        [1.02, 0.90, 0.92, 1.00],  # deep grey matter
        [0.70, 0.85, 2.60, 0.70],  # vessels / choroid plexus (enhance on T1ce; flow void on T2)
        [1.45, 0.90, 0.94, 1.60],  # white-matter hyperintensities (periventricular caps, small lesions)
        [1.70, 0.82, 0.88, 2.00],  # edema
        [2.00, 0.55, 1.05, 2.80],  # non-enhancing tumour
        [1.45, 0.90, 2.40, 1.60],  # enhancing tumour
        [1.45, 0.48, 0.52, 3.10],  # necrosis
    ],
    dtype=np.float32,
)
# White-matter intensity per modality (BraTS 2021 scale); each case draws a scanner gain below or around it.
_WM_LEVEL = np.array([900.0, 900.0, 1850.0, 430.0], dtype=np.float32)
# Rician noise level per modality (fraction of WM): the real T1 images are the smoothest.
_NOISE = (0.03, 0.015, 0.025, 0.03)
# Brain centre (fraction of the grid) and the cerebrum's semi-axes (mm), from the real cases' brain masks.
_CENTRE_FRACTION = np.array([0.498, 0.530, 0.490])
_BRAIN_SEMI_AXES_MM = np.array([67.0, 85.0, 71.0])


@dataclass(frozen=True)
class _Frame:
    """Voxel <-> phantom-millimetre mapping of a grid (per-axis scale ``s`` voxels per mm)."""

    shape: tuple[int, int, int]
    s: np.ndarray  # voxels per mm along each axis
    centre: np.ndarray  # brain centre in voxels

    def min_mm(self, voxels: float) -> float:
        """The length in mm that spans at least ``voxels`` voxels along every axis."""
        return float(voxels / self.s.min())


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset written with ``seed`` (independent, reproducible streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """A Gaussian random field of unit variance: white noise low-passed by a Gaussian of ``sigma_vox`` (per axis).

    Drawn directly in the Fourier domain: only frequencies below ~3 sigma of the Gaussian spectrum get
    coefficients. Fine fields are inverted with one real FFT; very smooth ones (at most 16 frequencies per axis)
    with a separable inverse DFT of just those coefficients (three small matrix products). Measured on a
    150x185x150 box: FFT ~0.08 s, separable ~0.01 s, versus ~1 s for ``ndimage.zoom`` (order 3) of a coarse
    grid or ``gaussian_filter`` of full-size noise; isotropic and without interpolation facets.
    """
    sigma_vox = np.maximum(np.asarray(sigma_vox, dtype=float), 0.5)
    freqs, keep = [], []
    for axis, (n, sig) in enumerate(zip(shape, sigma_vox, strict=True)):
        f = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
        k = np.flatnonzero(np.abs(f) <= 3.0 / (2 * np.pi * sig))
        keep.append(k)
        freqs.append(f[k])
    f2 = sum(
        (f * sig) ** 2 * (2 * np.pi**2)
        for f, sig in zip(np.meshgrid(*freqs, indexing="ij", sparse=True), sigma_vox, strict=True)
    )
    amplitude = np.exp(-f2).astype(np.float32)
    block = amplitude.shape
    noise = rng.standard_normal(block, dtype=np.float32) + 1j * rng.standard_normal(block, dtype=np.float32)
    coeffs = noise * amplitude
    if max(block) <= 16:
        field = coeffs.astype(np.complex64)
        for axis, (n, f) in enumerate(zip(shape[:-1], freqs[:-1], strict=True)):
            basis = np.exp(2j * np.pi * np.outer(np.arange(n), f)).astype(np.complex64)
            field = np.moveaxis(np.tensordot(basis, field, axes=([1], [axis])), 0, axis)
        last = 2 * np.pi * np.outer(freqs[-1], np.arange(shape[-1]))
        field = field.real @ np.cos(last).astype(np.float32) - field.imag @ np.sin(last).astype(np.float32)
    else:
        spectrum = np.zeros(shape[:-1] + (shape[-1] // 2 + 1,), dtype=np.complex64)
        spectrum[np.ix_(*keep)] = coeffs
        field = scipy.fft.irfftn(spectrum, s=shape, axes=tuple(range(len(shape))))
    field = np.ascontiguousarray(field, dtype=np.float32)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def _axes_mm(frame: _Frame, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open-grid coordinates (mm from the brain centre) of the voxels in ``box``."""
    return tuple(
        ((np.arange(sl.start, sl.stop) - c) / s).astype(np.float32).reshape([-1 if a == ax else 1 for a in range(3)])
        for ax, (sl, c, s) in enumerate(zip(box, frame.centre, frame.s, strict=True))
    )


def _box_around(frame: _Frame, centre_mm: np.ndarray, half_mm: np.ndarray) -> tuple[slice, ...]:
    """The voxel box (clipped to the grid) of a region ``centre_mm +- half_mm``."""
    lo = np.floor(frame.centre + (centre_mm - half_mm) * frame.s).astype(int)
    hi = np.ceil(frame.centre + (centre_mm + half_mm) * frame.s).astype(int) + 1
    lo, hi = np.clip(lo, 0, frame.shape), np.clip(hi, 0, frame.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _sub_box(
    frame: _Frame, box: tuple[slice, ...], centre_mm: np.ndarray, half_mm: np.ndarray
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of ``box`` within ``centre_mm +- half_mm``: as slices of the full grid, and of ``box``."""
    region = tuple(
        slice(max(a.start, o.start), min(a.stop, o.stop))
        for a, o in zip(_box_around(frame, np.asarray(centre_mm), np.asarray(half_mm)), box, strict=True)
    )
    return region, tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, box, strict=True))


def _sigma(frame: _Frame, mm: float) -> np.ndarray:
    return mm * frame.s


@dataclass
class _Anatomy:
    """A tumour-free brain, on the box of the grid that holds it."""

    classes: np.ndarray  # uint8 tissue class per voxel (in the brain box)
    depth: np.ndarray  # mm below the nearest brain surface (outer surface, fissures, cerebellum, brainstem)
    box: tuple[slice, ...]  # where the arrays sit in the full volume
    ventricles: np.ndarray  # bool
    csf: np.ndarray  # float32 CSF fraction of each voxel on top of its class (thin sulci, brain surface)


def _radial_depth(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Depth (mm) below the surface ``r == 1`` of a star-shaped body, measured along the ray from its centre."""
    return np.sqrt(dx * dx + dy * dy + dz * dz) * (1.0 / np.maximum(r, 1e-3) - 1.0)


def _brain(rng: np.random.Generator, frame: _Frame) -> _Anatomy:
    """Brain mask and normal tissues: cerebrum (cortex with gyri and sulci, WM, the interhemispheric and
    Sylvian fissures), cerebellum with folia, brainstem, deep GM, ventricles and vessels."""
    semi = (_BRAIN_SEMI_AXES_MM * rng.uniform(0.95, 1.04, 3)).astype(np.float32)
    box = _box_around(frame, np.zeros(3), semi * 1.12 + frame.min_mm(2))
    x, y, z = _axes_mm(frame, box)
    shape = tuple(sl.stop - sl.start for sl in box)
    deform = _smooth_field(rng, shape, _sigma(frame, 18.0))

    # Cerebellum (an ellipsoid under the occipital lobes) and brainstem (an elliptic column in front of it).
    cb_c = (np.array([0.0, 40.0, -42.0]) + rng.uniform(-2, 2, 3)).astype(np.float32)
    cb_s = (np.array([49.0, 32.0, 23.0]) * rng.uniform(0.93, 1.05, 3)).astype(np.float32)
    cx, cy, cz = x / cb_s[0], (y - cb_c[1]) / cb_s[1], (z - cb_c[2]) / cb_s[2]
    r_cb = np.sqrt(cx * cx + cy * cy + cz * cz) * (1.0 + 0.03 * deform)
    depth_cb = _radial_depth(x, y - cb_c[1], z - cb_c[2], r_cb)
    rho_bs = np.sqrt((x / 12.0) ** 2 + ((y - 10.0) / 11.0) ** 2)  # (X, Y, 1)
    depth_bs = np.minimum(np.minimum((1.0 - rho_bs) * 11.0, -18.0 - z), z + 58.0) + 0.5 * deform

    # Cerebrum: a superellipsoid, wider at the back (egg), deformed by smooth noise.
    u = x / (semi[0] * (1.0 + 0.07 * y / semi[1]))
    v = y / semi[1]
    w = z / semi[2]
    p = 2.3
    rho = (np.abs(u) ** p + np.abs(v) ** p) ** (1.0 / p)  # (X, Y, 1)
    r_plain = np.sqrt(rho * rho + w * w)
    r = r_plain * (1.0 + 0.035 * deform)
    # Its floor: frontal lobes end high, temporal lobes lower, occipital lobes rest on the cerebellum.
    foot = 1.0 - cx[..., 0] ** 2 - cy[..., 0] ** 2
    on_cb = (cb_c[2] + 0.6 + cb_s[2] * np.sqrt(np.clip(foot, 0, 1))) / semi[2]
    front = expit((-v[..., 0] - 0.55) / 0.05)
    back = expit((v[..., 0] - 0.05) / 0.06)
    lateral = expit((np.abs(u[..., 0]) - 0.4) / 0.06)
    mid = -0.42 - 0.2 * lateral
    post = np.where(foot > 0, on_cb, -0.52)
    floor = (-0.46 * front + mid * (1 - front) * (1 - back) + post * back)[..., None]
    outer = np.minimum(_radial_depth(x, y, z, r), (w - floor + 0.02 * deform) * semi[2])

    # Interhemispheric fissure (from the vertex down to the corpus callosum, all the way down in front of and
    # behind it) and Sylvian fissures (between frontal and temporal lobes), lined by cortex like the surface.
    ventricle_height = rng.uniform(0.0, 6.0)
    cc_top = ventricle_height + 17.0
    beyond_cc = np.maximum(np.abs(y) - 24.0, 0)
    fissure_floor = cc_top - 0.085 * beyond_cc * beyond_cc  # wraps round the genu and splenium
    below = (fissure_floor - z) / np.sqrt(1.0 + (0.17 * beyond_cc) ** 2)  # ~ distance below the fissure's edge
    half_width = 0.8 + 0.6 * np.clip((z - fissure_floor) / 40.0, 0, 1)
    across = np.abs(x + 1.5 * deform) - half_width
    # Depth grows fast below the fissure's edge: the corpus callosum under it is WM, not cortex.
    medial = np.where(below > 0, np.sqrt(across * across + 100.0 * below * below), across)
    sylvian_z = -8.0 + 0.5 * (np.abs(x) - 36.0) + 0.15 * (y + 10.0) + 0.006 * (y + 10.0) ** 2 + 3.0 * deform
    # Beyond its edges (|x| < 36 mm: the insula; y outside -40..20 mm) the depth grows fast, as for the corpus
    # callosum, so that the cortex lines the fissure without a seam.
    outside = np.maximum(36.0 - np.abs(x), 0) + np.maximum(-40.0 - y, 0) + np.maximum(y - 20.0, 0)
    sylvian = np.abs(z - sylvian_z) - 0.6 + 10.0 * outside
    # The brain: cerebrum, cerebellum and brainstem; the fissures inside the cerebrum hold CSF.
    surface = np.minimum(outer, medial)  # depth under the surfaces that carry sulci
    depth_c = np.minimum(surface, sylvian)
    brain = np.maximum(np.maximum(outer, depth_cb), depth_bs) > 0
    depth = np.maximum(np.maximum(depth_c, depth_cb), depth_bs)
    in_cb = brain & (depth_cb >= depth)
    in_c = brain & ~in_cb & (depth_c >= depth)

    classes = np.full(shape, _WM, dtype=np.uint8)
    voxel = frame.min_mm(1.0)  # voxel size in phantom mm
    # CSF over the surface and in the sulci is thinner than a voxel: kept as a CSF fraction (partial volume).
    csf = np.clip(0.5 + (0.9 - depth) / voxel, 0, 1)  # 1 inside the fissures (depth < 0)
    # Cortex: a GM ribbon under the surface; sulci (the zero set of a random pattern over the surface, running
    # inwards) are thin CSF clefts lined by GM, with WM in the gyri between them.
    sigma_g = max(3.0, frame.min_mm(1.0))
    shell = in_c & (surface < 22.0)
    g = np.zeros(shape, dtype=np.float32)
    medial_weight = expit((outer - medial) / 3.0)
    g[shell] = _surface_pattern(rng, sigma_g, semi, shell, x, y, z, r_plain, medial_weight, 5.0 * deform)
    slope = np.sqrt(sum((d * s) ** 2 for d, s in zip(np.gradient(g), frame.s, strict=True)))[shell]
    tangential = np.abs(g[shell]) / np.maximum(slope, 0.05)  # ~ distance (mm) to the nearest sulcus (g = 0)
    sulcus = 0.45  # half width (mm) of a sulcus
    sulcal_depth = 12.0 + 3.0 * deform[shell]
    d = surface[shell]
    cortex = 3.2  # GM thickness (mm) under the surface and along the sulcal walls
    wm = (d > cortex) & ((tangential > sulcus + cortex) | (d > sulcal_depth + cortex))
    classes[shell] = np.where(wm, _WM, _GM)
    in_sulcus = np.minimum(np.clip(0.5 + (sulcus - tangential) / voxel, 0, 1), 2 * sulcus / voxel)
    csf[shell] = np.maximum(csf[shell], np.where(d < sulcal_depth, in_sulcus, 0))
    classes[in_c & (sylvian < cortex)] = _GM  # the insula and the opercula lining the Sylvian fissures
    # Cortical veins: stretches of sulci near the surface (where the slow field `deform` is near 1).
    veins = np.zeros(shape, dtype=bool)
    veins[shell] = (tangential < sulcus + 0.5 * voxel) & (d < 4.5) & (np.abs(deform[shell] - 1.0) < 0.45)
    # Cerebellar folia: thin radial clefts in the sagittal plane over a GM cortex around a WM core.
    spacing = max(4.5, frame.min_mm(3.0))
    folia_n = np.pi * 25.0 / spacing
    phi = np.arctan2(z - cb_c[2], y - cb_c[1])
    folia = np.abs(np.sin(folia_n * phi + 3.0 * deform)) < 0.25
    classes[in_cb & (depth_cb < 7.0)] = _GM
    csf[in_cb & folia & (depth_cb < 6.0)] = 0.6  # thin fissures: part CSF, part cortex
    classes[csf >= 1] = _CSF
    # Superior sagittal sinus: along the top of the interhemispheric fissure (bright on T1ce).
    vessels = veins | (in_c & (np.abs(x) < 3.0) & (outer < 4.0) & (z > 25.0))
    classes[vessels] = _VESSEL
    ventricles = _deep_structures(rng, frame, box, classes, deform, ventricle_height) & in_c
    # A few small white-matter lesions (bright on FLAIR and T2, like edema, but no tumour).
    deep_wm = np.flatnonzero((classes == _WM) & (depth > 10.0))
    for index in rng.choice(deep_wm, size=min(rng.poisson(1.0), deep_wm.size), replace=False):
        centre = np.array(np.unravel_index(index, shape)) + [sl.start for sl in box]
        radius = max(rng.uniform(1.5, 4.0), frame.min_mm(0.8))
        at = (centre - frame.centre) / frame.s
        spot, local = _sub_box(frame, box, at, np.full(3, radius))
        sx, sy, sz = _axes_mm(frame, spot)
        inside = (sx - at[0]) ** 2 + (sy - at[1]) ** 2 + (sz - at[2]) ** 2 < radius * radius
        region = classes[local]
        region[inside & (region == _WM)] = _WMH
    classes[~brain] = _BG
    csf[~brain | ventricles | vessels] = 0
    return _Anatomy(classes=classes, depth=depth, box=box, ventricles=ventricles, csf=csf)


def _surface_pattern(
    rng: np.random.Generator,
    sigma_mm: float,
    semi: np.ndarray,
    shell: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    r_plain: np.ndarray,
    medial_weight: np.ndarray,
    warp: np.ndarray,
) -> np.ndarray:
    """A unit-variance random pattern over the cortical surface, at the ``shell`` voxels: a smooth 3D field
    sampled near where each voxel's ray from the centre meets the outer surface (or, near the interhemispheric
    fissure, near the midline straight across from it; ``medial_weight`` blends the two), so it varies slowly
    along the depth and sulci run roughly perpendicular to the surface; ``warp`` (mm) shifts the samples."""
    h = sigma_mm / 2.0  # grid step (mm) of the field
    extent = semi * 1.15
    n = tuple(int(np.ceil(2 * e / h)) + 1 for e in extent)
    field = _smooth_field(rng, n, np.full(3, 2.0))
    px, py, pz = (np.broadcast_to(a, shell.shape)[shell] for a in (x, y, z))
    bend = warp[shell]
    # Sampling part of the way from the surface point to the voxel itself bends the sulci along the depth.
    along = 0.45 + 0.55 / np.maximum(r_plain[shell], 0.2)
    b = medial_weight[shell]
    sx = px * (b * 0.6 + (1 - b) * along)
    sy = py * (b + (1 - b) * along)
    sz = pz * (b + (1 - b) * along)
    coords = [(c + bend + e) / h for c, e in zip((sx, sy, sz), extent, strict=True)]
    return ndimage.map_coordinates(field, coords, order=1, mode="nearest")


def _deep_structures(
    rng: np.random.Generator,
    frame: _Frame,
    box: tuple[slice, ...],
    classes: np.ndarray,
    deform: np.ndarray,
    zv: float,
) -> np.ndarray:
    """Deep grey matter, the lateral ventricles (butterfly-shaped in coronal slices), the third ventricle,
    choroid plexus and periventricular caps, drawn into ``classes`` (the brain ``box``); returns the ventricles."""
    region, local = _sub_box(frame, box, np.array([0.0, -4.0, zv - 5.0]), np.array([62.0, 62.0, 36.0]))
    classes, deform = classes[local], deform[local]  # views: drawing into them draws into the brain box
    x, y, z = _axes_mm(frame, region)
    ax = np.abs(x)
    size = rng.uniform(0.8, 1.45)  # ventricle size varies a lot between patients (age, atrophy)
    # Thalami and lentiform nuclei.
    for cx, cy, cz, a, b, c in ((11.0, 6.0, zv - 11, 8.0, 13.0, 9.0), (21.0, -10.0, zv - 7, 6.0, 13.0, 10.0)):
        blob = ((ax - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 + 0.15 * deform < 1
        classes[blob] = _DGM
    # Lateral ventricles: a centreline running front to back (t in [-1, 1]), diverging at the atria, arched,
    # with a cross-section that is an ellipse tilted so the two sides form a butterfly.
    length = 40.0 * (0.85 + 0.15 * size)
    t = (y + 4.0) / length
    offset = 8.0 + 3.0 * t + 10.0 * t * t  # frontal horns angled forward-out, atria diverging
    height = zv + 2.5 * (1.0 - t * t)
    dx, dz = ax - offset, z - height
    theta = np.deg2rad(rng.uniform(35.0, 50.0))
    a = (dx * np.cos(theta) + dz * np.sin(theta)) / (12.0 * size)
    b = (-dx * np.sin(theta) + dz * np.cos(theta)) / (4.5 * size)
    profile = np.clip(1.0 - t**4, 0, None) * (1.0 + 0.2 * np.clip(deform, -2, 2))  # zero beyond the horns
    lateral = (a * a + b * b < profile) & (ax > 0.8)
    third = (ax < 1.0 + 0.4 * size) & (np.abs(y - 0.0) < 12.0) & (z > zv - 20.0) & (z < zv - 4.0)
    ventricles = lateral | third
    if rng.random() < 0.4:  # periventricular caps: FLAIR-bright rims round the frontal and occipital horns
        caps = (a * a + b * b < profile * rng.uniform(1.3, 2.0)) & (np.abs(t) > 0.45)
        classes[caps & (classes == _WM)] = _WMH
    classes[ventricles] = _CSF
    # Choroid plexus in the atria.
    plexus = ((ax - (offset + 1.0)) / 3.0) ** 2 + ((t - 0.75) * length / 5.0) ** 2 + ((z - height) / 2.5) ** 2 < 1
    classes[ventricles & plexus] = _VESSEL
    found = np.zeros(tuple(sl.stop - sl.start for sl in box), dtype=bool)
    found[local] = ventricles
    return found


@dataclass
class _Tumour:
    """One glioma, on a box of the brain box."""

    box: tuple[slice, ...]
    classes: np.ndarray  # tumour class per voxel in box (0 where none)
    edema_strength: np.ndarray  # 0..1, strongest next to the core


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _tumour(rng: np.random.Generator, frame: _Frame, anatomy: _Anatomy, scale: float) -> _Tumour | None:
    """One glioma: placed inside the brain; returns None when no place fits."""
    rim = max(rng.uniform(3.5, 8.0) * scale, frame.min_mm(2.0))
    necrosis_r = max(rng.uniform(4.0, 16.0) * scale, frame.min_mm(2.0))
    core_r = necrosis_r + rim
    edema_r = max(min(core_r * rng.uniform(1.3, 2.1), 42.0 * max(scale, 0.6)), core_r + frame.min_mm(2.5))
    b0 = anatomy.box
    room = 0.6 * float(anatomy.depth.max())  # on small grids the minimum sizes can exceed the brain's depth
    for _ in range(200):
        c = rng.uniform(-1, 1, 3) * _BRAIN_SEMI_AXES_MM * np.array([0.62, 0.6, 0.45]) + np.array([0, 0, 10.0])
        if abs(c[0]) < 8.0:
            continue
        idx = np.round(frame.centre + c * frame.s).astype(int) - [sl.start for sl in b0]
        if np.any(idx < 0) or np.any(idx >= anatomy.classes.shape):
            continue
        i = tuple(idx)
        if anatomy.depth[i] > min(core_r + 3.0, room) and not anatomy.ventricles[i]:
            break
    else:
        return None

    rot = _rotation(rng)
    stretch = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    edema_stretch = stretch * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    rough = 0.15
    reach = edema_r * float(edema_stretch.max()) / (1.0 - 2 * rough) + frame.min_mm(2)
    box, local = _sub_box(frame, b0, c, np.full(3, reach))
    shape = tuple(sl.stop - sl.start for sl in box)
    x, y, z = _axes_mm(frame, box)
    x, y, z = x - c[0], y - c[1], z - c[2]

    def blob(stretch: np.ndarray, rot: np.ndarray, roughness: float, sigma_mm: float) -> np.ndarray:
        m = rot / stretch[:, None]
        px = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z
        py = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z
        pz = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z
        field = _smooth_field(rng, shape, _sigma(frame, sigma_mm))
        # Bounded (so it fits the box) without flattening the lobes as tanh would.
        return np.sqrt(px * px + py * py + pz * pz) * (1.0 + roughness * np.clip(field, -2, 2))

    d_core = blob(stretch, rot, 0.14, core_r * 0.35)
    # The necrosis follows the core's shape, so the rim is irregular (nodular) but seldom broken.
    nodules = _smooth_field(rng, shape, _sigma(frame, max(2.0, rim * 0.6)))
    d_necr = d_core - 0.5 * rim * np.tanh(nodules)  # rim thickness between 0.5 and 1.5 times `rim`
    d_edema = blob(edema_stretch, _rotation(rng), rough, max(5.0, edema_r * 0.25))

    tissue = anatomy.classes[local]
    brain = (tissue != _BG) & (anatomy.depth[local] > 0.5)
    # Edema spreads along white matter; it enters grey matter only close to the tumour, and it surrounds the
    # core (a margin of at least a voxel) except where the core meets a ventricle or the brain's surface.
    spreads = np.isin(tissue, (_WM, _DGM, _WMH)) | (d_edema < edema_r * 0.7)
    around_core = d_core < core_r + max(2.0, frame.min_mm(1.2))
    edema = ((d_edema < edema_r) & spreads | around_core) & brain & ~anatomy.ventricles[local]
    core = (d_core < core_r) & brain
    classes = np.zeros(shape, dtype=np.uint8)
    classes[edema] = _EDEMA
    classes[core] = _ENH
    classes[core & (d_necr < necrosis_r)] = _NECR
    if rng.random() < 0.35:  # non-enhancing solid parts: a patch of the rim and of the tissue next to the core
        patch = _smooth_field(rng, shape, _sigma(frame, max(4.0, core_r * 0.4))) > rng.uniform(0.3, 0.8)
        nonenh = patch & (classes == _ENH) | patch & (d_core < core_r * 1.15) & (edema | core)
        classes[nonenh] = _NONENH
    strength = np.clip(1.0 - (d_edema - core_r) / max(edema_r - core_r, 1e-3), 0, 1).astype(np.float32)
    return _Tumour(box=local, classes=classes, edema_strength=strength)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 24:
        raise ConfigError(f"a phantom's shape must be three sizes of at least 24 voxels, got {shape}")
    return shape


def make_phantom(
    seed: int, shape: tuple[int, int, int] = BRATS_SHAPE, *, head: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic BraTS-like case.

    Returns ``(images, labels)``: images ``float32 (4, X, Y, Z)`` in the order FLAIR, T1, T1ce, T2 with raw-like
    integer-valued intensities (> 0 in the brain, exactly 0 outside), and ``uint8`` internal labels (0 background,
    1 necrotic/non-enhancing core, 2 edema, 3 enhancing). Deterministic for ``seed``; ``shape`` scales the brain.
    ``head=True``: the same brain and labels inside a head (extra-axial CSF, skull, scalp, noisy air; see
    :mod:`agsevnet.synth.head`), as a scan before brain extraction; the brain's voxels are those of
    ``head=False``, so ``make_phantom(seed, shape)`` is the skull-stripped truth of ``make_phantom(seed, shape,
    head=True)``.
    """
    images, labels, _ = make_phantom_with_tissues(seed, shape, head=head)
    return images, labels


def make_phantom_with_tissues(
    seed: int, shape: tuple[int, int, int] = BRATS_SHAPE, *, head: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`make_phantom` plus the ground-truth tissue map (``uint8``, values of :data:`TISSUES`), to check
    contrasts or study what a model confuses (vessels with enhancing tumour, WM lesions with edema).
    With ``head=True`` the map also holds the head's tissues; the brain is where it holds a brain tissue
    (:func:`brain_mask`)."""
    images, labels, tissues = _brain_phantom(seed, shape)
    if head:
        from agsevnet.synth.head import add_head  # head builds on this module's fields and levels

        # Its own random stream: the brain (and so the labels) stays that of head=False.
        rng = np.random.default_rng([int(seed), 0x4EAD])
        images, tissues = add_head(images, tissues, np.array(tissues.shape) / np.array(BRATS_SHAPE), rng)
    return images, labels, tissues


def brain_mask(tissues: np.ndarray) -> np.ndarray:
    """Where a tissue map of :func:`make_phantom_with_tissues` holds brain (tumour included): the ground truth of
    brain extraction."""
    return (tissues != _BG) & (tissues <= _NECR)


def _brain_phantom(seed: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The skull-stripped phantom: images, labels and tissue map (see :func:`make_phantom_with_tissues`)."""
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    scale = np.array(shape) / np.array(BRATS_SHAPE)  # voxels per phantom mm
    centre_mm = _CENTRE_FRACTION * np.array(BRATS_SHAPE) + rng.uniform(-2.5, 2.5, 3)
    frame = _Frame(shape=shape, s=scale, centre=centre_mm * scale)
    anatomy = _brain(rng, frame)

    classes = anatomy.classes.copy()
    edema_strength = np.zeros(classes.shape, dtype=np.float32)
    n_tumours = 2 if rng.random() < 0.25 else 1
    placed = 0
    for k in range(n_tumours):
        tumour = _tumour(rng, frame, anatomy, scale=1.0 if k == 0 else rng.uniform(0.45, 0.75))
        if tumour is None:
            continue
        placed += 1
        region = classes[tumour.box]
        take = tumour.classes > np.where(region >= _EDEMA, region, 0)  # higher class wins where tumours overlap
        region[take] = tumour.classes[take]
        edema_strength[tumour.box] = np.maximum(edema_strength[tumour.box], tumour.edema_strength)
    if placed == 0:  # never seen: the placement falls back to the deepest 40% of the brain
        raise RuntimeError(f"phantom seed {seed}: no place for a tumour in shape {shape}")

    # Per-case contrasts: tissue ratios jittered, tumour ones more; one scanner gain per modality.
    contrast = _CONTRAST * np.exp(rng.normal(0, 0.05, _CONTRAST.shape)).astype(np.float32)
    contrast[_EDEMA:] *= np.exp(rng.normal(0, 0.08, (_N_CLASSES - _EDEMA, 4))).astype(np.float32)
    contrast[_WM] = 1.0
    # How strongly edema and enhancement stand out varies from patient to patient.
    contrast[_EDEMA] = 1.0 + (contrast[_EDEMA] - 1.0) * rng.uniform(0.85, 1.2)
    contrast[_ENH, 2] = 1.0 + (contrast[_ENH, 2] - 1.0) * rng.uniform(0.65, 1.2)
    # Scanner gain: BraTS 2018-2020 files are 3-5 times darker than 2021+ ones.
    level = _WM_LEVEL * np.exp(rng.uniform(np.log(0.2), np.log(1.3), 4)).astype(np.float32)

    brain = classes != _BG
    in_tumour = classes >= _EDEMA
    texture = 0.025 * _smooth_field(rng, classes.shape, _sigma(frame, 1.3))
    # Tumours are more heterogeneous than normal tissue (an empty box where there is no tumour).
    where = bounding_slices(in_tumour) or (slice(0, 0),) * in_tumour.ndim
    heterogeneity = 0.08 * _smooth_field(rng, in_tumour[where].shape, _sigma(frame, 2.5))
    texture[where] += np.where(in_tumour[where], heterogeneity, 0)
    texture += 1.0
    csf = np.where(in_tumour, np.float32(0), anatomy.csf)
    edema = classes == _EDEMA
    edema_weight = 0.8 + 0.2 * edema_strength[edema]
    images = np.zeros((4, *shape), dtype=np.float32)
    for m in range(4):
        img = contrast[classes, m] * level[m]
        # Edema fades into the surrounding tissue away from the core (visible, but its border not a hard step).
        img[edema] += (1 - edema_weight) * (contrast[anatomy.classes[edema], m] * level[m] - img[edema])
        img += csf * (contrast[_CSF, m] * level[m] - img)
        img *= texture
        img = ndimage.gaussian_filter(img, 0.6, truncate=2.0)  # partial volume, as after resampling to 1 mm
        img *= np.exp(0.12 * _smooth_field(rng, classes.shape, _sigma(frame, 55.0)))  # bias field
        # Rician noise: the magnitude of the signal plus complex Gaussian noise.
        sigma_noise = _NOISE[m] * level[m]
        signal = img[brain]
        real = signal + sigma_noise * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma_noise * rng.standard_normal(signal.shape, dtype=np.float32)
        img[:] = 0
        img[brain] = np.maximum(np.rint(np.hypot(real, imag)), 1.0)
        images[(m, *anatomy.box)] = img
    tissues = np.zeros(shape, dtype=np.uint8)
    tissues[anatomy.box] = classes
    return images, _CLASS_LABEL[tissues], tissues


# ----------------------------------------------------------------------------------------------------------
# Writing datasets


def phantom_geometry(shape: tuple[int, int, int] = BRATS_SHAPE) -> Geometry:
    """The grid phantoms are written on: ``shape`` at 1 mm with the BraTS affine as qform and sform (code 1)
    and spatial units mm, like the real BraTS files."""
    return Geometry(
        shape=tuple(int(n) for n in shape),
        affine=BRATS_AFFINE.copy(),
        qform=BRATS_AFFINE.copy(),
        qform_code=1,
        sform=BRATS_AFFINE.copy(),
        sform_code=1,
        zooms=(1.0, 1.0, 1.0),
        xyzt_units=2,  # mm, no time unit: what the BraTS files have
    )


def case_id(naming: str, index: int) -> str:
    """The id of case ``index`` (1-based) in a dataset written with ``naming``."""
    if naming == "brats2023":
        return f"Phantom-{index:05d}-000"
    if naming == "msd":
        return f"BRATS_{index:03d}"
    return f"Phantom_{index:03d}"


def _case_paths(out_dir: Path, naming: str, index: int, with_labels: bool) -> tuple[dict[str, Path], Path | None]:
    """Where case ``index`` goes: ``({modality or "all": image file}, label file or None)``."""
    cid = case_id(naming, index)
    if naming in ("brats2020", "brats2023"):
        tokens = _BRATS_TOKENS[naming]
        sep = "-" if naming == "brats2023" else "_"
        folder = out_dir / cid
        images = {m: folder / f"{cid}{sep}{tokens[m]}.nii.gz" for m in MODALITIES}
        return images, folder / f"{cid}{sep}seg.nii.gz" if with_labels else None
    split = "Tr" if with_labels else "Ts"  # MSD / nnU-Net: inference-only cases are the test split
    images_dir, labels_dir = out_dir / f"images{split}", out_dir / f"labels{split}"
    label = labels_dir / f"{cid}.nii.gz" if with_labels else None
    if naming == "msd":
        return {"all": images_dir / f"{cid}.nii.gz"}, label
    return {m: images_dir / f"{cid}_{c:04d}.nii.gz" for c, m in enumerate(MODALITIES)}, label


_BRATS_TOKENS = {
    "brats2020": {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"},
    "brats2023": {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
}
# The label convention each naming writes (see agsevnet.data.labels).
_CONVENTION = {"brats2020": "brats2020", "brats2023": "brats2023", "msd": "msd", "nnunet": "msd"}


def _write_case(
    out_dir: Path,
    naming: str,
    index: int,
    seed: int,
    shape: tuple[int, int, int],
    with_labels: bool,
    head: bool = False,
    clinical: dict | None = None,
) -> list[Path]:
    """Generate case ``index`` and write its files (each atomically); returns them."""
    if head or clinical is not None:
        return _write_raw_case(out_dir, naming, index, seed, shape, with_labels, head, clinical)
    images, labels = make_phantom(case_seed(seed, index), shape)
    geometry = phantom_geometry(shape)
    image_paths, label_path = _case_paths(out_dir, naming, index, with_labels)
    written = []
    if "all" in image_paths:  # one 4D file, channels last
        written.append(save_nifti(image_paths["all"], np.moveaxis(images, 0, -1), geometry, dtype=np.int16))
    else:
        for c, modality in enumerate(MODALITIES):
            written.append(save_nifti(image_paths[modality], images[c], geometry, dtype=np.int16))
    if label_path is not None:
        written.append(save_labels(label_path, from_internal(labels, _CONVENTION[naming]), geometry))
    return written


def _acquired_geometry(sequence: AcquiredSequence) -> Geometry:
    """The header of an acquired sequence: its affine as qform and sform (code 1, scanner), units mm."""
    return Geometry(shape=tuple(int(n) for n in sequence.data.shape), affine=sequence.affine.copy(),
                    qform=sequence.affine.copy(), qform_code=1, sform=sequence.affine.copy(), sform_code=1,
                    zooms=tuple(float(v) for v in sequence.voxel_size), xyzt_units=2)


def _write_raw_case(
    out_dir: Path,
    naming: str,
    index: int,
    seed: int,
    shape: tuple[int, int, int],
    with_labels: bool,
    head: bool,
    clinical: dict | None,
) -> list[Path]:
    """A case as it comes from the scanner (``raw/``: with a head and/or each sequence acquired on its own
    grid) and its ground truth on the BraTS grid (``truth/``); see :func:`write_phantom_dataset`."""
    cseed = case_seed(seed, index)
    images, labels, tissues = make_phantom_with_tissues(cseed, shape, head=head)
    brain = brain_mask(tissues)
    geometry = phantom_geometry(shape)
    raw_paths, _ = _case_paths(out_dir / "raw", naming, index, with_labels=False)
    truth_paths, truth_label = _case_paths(out_dir / "truth", naming, index, with_labels)
    folder = truth_paths[MODALITIES[0]].parent
    written = []
    if clinical is None:
        for c, modality in enumerate(MODALITIES):
            written.append(save_nifti(raw_paths[modality], images[c], geometry, dtype=np.int16))
    else:
        # Its own random stream: the phantom is that of the same seed without --clinical.
        rng = np.random.default_rng([cseed, 0xAC9])
        sequences = acquire_case(images, geometry.affine, rng, **clinical)
        record = {"format": "agsevnet-phantom-acquisition", "format_version": 1, "case_id": case_id(naming, index),
                  "seed": cseed, "head": head, "brats_grid": {"shape": list(geometry.shape),
                                                            "affine": geometry.affine.tolist()}, "sequences": {}}
        for modality, sequence in zip(MODALITIES, sequences, strict=True):
            path = raw_paths[modality]
            data = np.clip(np.rint(sequence.data), 0, np.iinfo(np.int16).max)
            written.append(save_nifti(path, data, _acquired_geometry(sequence), dtype=np.int16))
            record["sequences"][modality] = {
                "file": path.relative_to(out_dir).as_posix(), "shape": list(sequence.data.shape),
                "affine": sequence.affine.tolist(), "voxel_size": list(sequence.voxel_size),
                "pose": sequence.pose.to_json()}
        if with_labels:
            t1ce = sequences[MODALITIES.index("t1ce")]
            native = acquire_labels(labels, geometry.affine, t1ce.data.shape, t1ce.affine)
            written.append(save_labels(folder / f"{folder.name}_seg_on_t1ce_grid.nii.gz",
                                       from_internal(native, _CONVENTION[naming]), _acquired_geometry(t1ce)))
        record_path = folder / "acquisition.json"
        write_json_atomic(record_path, record)
        written.append(record_path)
    for c, modality in enumerate(MODALITIES):  # the skull-stripped truth: the brain of the same phantom
        written.append(save_nifti(truth_paths[modality], np.where(brain, images[c], 0), geometry, dtype=np.int16))
    written.append(save_labels(folder / f"{folder.name}_brainmask.nii.gz", brain.astype(np.uint8), geometry))
    if truth_label is not None:
        written.append(save_labels(truth_label, from_internal(labels, _CONVENTION[naming]), geometry))
    return written


def _dataset_json(naming: str, ids: list[str], seed: int, with_labels: bool) -> dict:
    """``dataset.json`` of an MSD (Task01 style) or nnU-Net v2 dataset of phantoms."""
    description = f"Synthetic BraTS-like phantoms written by agsevnet {__version__} (seed {seed})"
    if naming == "msd":
        split = "Tr" if with_labels else "Ts"
        images = [f"./images{split}/{cid}.nii.gz" for cid in ids]
        return {
            "name": "BRATS-phantom",
            "description": description,
            "tensorImageSize": "4D",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": len(ids) if with_labels else 0,
            "numTest": 0 if with_labels else len(ids),
            "training": [{"image": p, "label": p.replace("./imagesTr/", "./labelsTr/")} for p in images]
            if with_labels
            else [],
            "test": [] if with_labels else images,
        }
    return {
        "name": "BraTS-phantom",
        "description": description,
        "channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"},
        "labels": {"background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3},
        "numTraining": len(ids) if with_labels else 0,
        "file_ending": ".nii.gz",
    }


def write_phantom_dataset(
    out_dir: str | Path,
    cases: int,
    seed: int,
    shape: tuple[int, int, int] = BRATS_SHAPE,
    naming: str = "brats2020",
    *,
    with_labels: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
    head: bool = False,
    clinical: bool = False,
    max_rotation_deg: float = 12.0,
    max_shift_mm: float = 15.0,
    voxel_size: tuple[float, float, float] = CLINICAL_VOXEL_SIZE,
) -> list[Path]:
    """Write ``cases`` phantoms into ``out_dir`` in the layout ``naming`` and return the files written.

    Layouts: ``brats2020`` (``Phantom_001/Phantom_001_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``;
    labels 1/2/4), ``brats2023`` (``Phantom-00001-000/Phantom-00001-000-t2f.nii.gz``, ``-t1n``, ``-t1c``,
    ``-t2w``, ``-seg``; labels 1/2/3), ``msd`` (``imagesTr/BRATS_001.nii.gz``, 4D FLAIR, T1, T1gd, T2;
    ``labelsTr/BRATS_001.nii.gz``, 1 edema, 2 non-enhancing, 3 enhancing; ``dataset.json``) and ``nnunet``
    (``imagesTr/Phantom_001_0000..0003.nii.gz``, ``labelsTr/Phantom_001.nii.gz`` with MSD labels, nnU-Net v2
    ``dataset.json``). Images are int16, labels uint8, on :func:`phantom_geometry`. Without labels
    (``with_labels=False``) MSD and nnU-Net images go to ``imagesTs/`` (their inference-only split).

    Case ``i`` (1-based) is ``make_phantom(case_seed(seed, i), shape)``: cases are independent, and the same
    arguments write identical files. A non-empty ``out_dir`` raises :class:`OutputExistsError` unless
    ``overwrite`` (files of the same names are then replaced; other files are left alone). ``workers`` > 1
    generates cases in that many processes; ``progress`` shows a bar over cases.

    Scans as they come from the scanner, for ``agsevnet prepare`` (BraTS layouts only): ``head=True`` puts a
    head round each brain (:mod:`agsevnet.synth.head`); ``clinical=True`` acquires each sequence on its own grid
    (:func:`agsevnet.synth.acquisition.acquire_case`: a rigid pose of up to ``max_rotation_deg`` and
    ``max_shift_mm``, axial slices of ``voxel_size`` mm, its own matrix; the files' affines say exactly where
    each voxel lies). Such cases go to ``raw/<case>/`` (images only, named as the layout names them), and
    their ground truth on the BraTS grid to ``truth/<case>/``: the skull-stripped images and the labels (a
    BraTS case, the same phantom as without these options), ``<case>_brainmask.nii.gz``, and with ``clinical``
    ``<case>_seg_on_t1ce_grid.nii.gz`` (the labels acquired on the T1ce's grid) and ``acquisition.json`` (each
    sequence's file, shape, affine, voxel size and pose).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    shape = _check_shape(shape)
    if naming not in NAMINGS:
        raise ConfigError(f"unknown naming {naming!r}; expected one of {', '.join(NAMINGS)}")
    if cases < 1:
        raise ConfigError(f"the number of cases must be at least 1, got {cases}")
    acquisition = None
    if head or clinical:
        if naming not in ("brats2020", "brats2023"):
            raise ConfigError(f"head and clinical phantoms are written in the BraTS layouts (brats2020, brats2023),"
                              f" not {naming}: each sequence has its own file (and, with clinical, its own grid)")
    if clinical:
        voxel_size = tuple(float(v) for v in voxel_size)
        if len(voxel_size) != 3 or not all(v > 0 for v in voxel_size):
            raise ConfigError(f"the voxel size must be three sizes > 0 mm, got {voxel_size}")
        if not (max_rotation_deg >= 0 and max_shift_mm >= 0):
            raise ConfigError(f"the largest rotation and shift must be >= 0, got {max_rotation_deg} deg, "
                              f"{max_shift_mm} mm")
        acquisition = {"max_rotation_deg": float(max_rotation_deg), "max_shift_mm": float(max_shift_mm),
                       "voxel_size": voxel_size}
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError("exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError("output folder is not empty (use --overwrite to write into it)", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    indices = range(1, cases + 1)
    jobs = [(out_dir, naming, i, seed, shape, with_labels, head, acquisition) for i in indices]
    written: dict[int, list[Path]] = {}
    with tqdm(total=cases, desc="phantom", unit="case", disable=not progress, dynamic_ncols=True) as bar:
        if workers > 1 and cases > 1:
            # "spawn": workers start clean even when the caller already runs threads (torch, tqdm).
            context = get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, cases), mp_context=context) as pool:
                futures = {pool.submit(_write_case, *job): job[2] for job in jobs}
                for future in as_completed(futures):
                    written[futures[future]] = future.result()
                    bar.update()
        else:
            for job in jobs:
                written[job[2]] = _write_case(*job)
                bar.update()
    files = [path for i in indices for path in written[i]]
    if naming in ("msd", "nnunet"):
        dataset_json = out_dir / "dataset.json"
        write_json_atomic(dataset_json, _dataset_json(naming, [case_id(naming, i) for i in indices], seed, with_labels))
        files.append(dataset_json)
    return files
