"""Rigid and affine registration with SimpleITK (Mattes mutual information, a 3-level pyramid).

Both images are first brought onto isotropic registration grids along their own axes (:func:`isotropic`,
anti-aliased): a pyramid of thick-slice images would shrink their slices further (5.5 mm to 22 mm), and an
isotropic fixed grid samples the metric evenly. The result is a 4x4 matrix (fixed point -> moving point, LPS mm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agsevnet.prepare.geometry import antialias, matrix_of, sitk, world_centre

REGISTRATION_SPACING = 2.0  # mm: the finest level of every registration
SEED = 20261205  # the metric's random sampling: the same images give the same transform


@dataclass
class Registration:
    matrix: np.ndarray  # fixed point -> moving point (LPS mm)
    metric: float  # Mattes mutual information at the end (negative: lower is better)
    iterations: int
    seconds: float
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": round(self.metric, 5), "iterations": self.iterations,
                "seconds": round(self.seconds, 2)}


def isotropic(img, spacing: float = REGISTRATION_SPACING):
    """``img`` on a grid of ``spacing`` mm voxels along its own axes, covering the same extent (anti-aliased)."""
    s = sitk()
    in_spacing = np.asarray(img.GetSpacing(), float)
    size = np.asarray(img.GetSize(), float)
    if np.allclose(in_spacing, spacing):
        return img
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    corner = np.asarray(img.GetOrigin()) - direction @ (in_spacing / 2)
    new_size = [max(1, int(np.ceil(n * d / spacing))) for n, d in zip(size, in_spacing)]
    ref = s.Image(new_size, s.sitkFloat32)
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection(img.GetDirection())
    ref.SetOrigin([float(v) for v in corner + direction @ np.full(3, spacing / 2)])
    smooth = antialias(img, spacing)
    return s.Resample(smooth, ref, s.Transform(), s.sitkLinear, 0.0, s.sitkFloat32)


def _method(sampling: float, shrink: list[int], iterations: int):
    s = sitk()
    reg = s.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, SEED)
    reg.SetInterpolator(s.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([max(0, f - 1) for f in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _run(reg, fixed, moving, transform, kind: str, started: float) -> Registration:
    final = reg.Execute(fixed, moving)
    return Registration(matrix_of(final), float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()),
                        time.perf_counter() - started, kind)


def rigid(fixed, moving, *, init: str = "identity", sampling: float = 0.05, shrink=(4, 2, 1),
          iterations: int = 200) -> Registration:
    """Rigid registration of two registration-grid images (:func:`isotropic`). ``init``: identity (the scanner's
    own coordinates: sequences of one session) or moments (centres of mass: an atlas and a patient)."""
    s = sitk()
    started = time.perf_counter()
    transform = s.Euler3DTransform()
    transform.SetCenter([float(v) for v in world_centre(fixed)])
    if init == "moments":
        transform = s.CenteredTransformInitializer(fixed, moving, s.Euler3DTransform(),
                                                   s.CenteredTransformInitializerFilter.MOMENTS)
    reg = _method(sampling, list(shrink), iterations)
    reg.SetInitialTransform(transform, inPlace=False)
    return _run(reg, fixed, moving, transform, "rigid", started)


def affine(fixed, moving, start: np.ndarray, *, sampling: float = 0.05, shrink=(2, 1),
           iterations: int = 200) -> Registration:
    """Affine registration started from the matrix ``start`` (a rigid result)."""
    s = sitk()
    started = time.perf_counter()
    transform = s.AffineTransform(3)
    centre = world_centre(fixed)
    transform.SetCenter([float(v) for v in centre])
    lin = start[:3, :3]
    transform.SetMatrix([float(v) for v in lin.ravel()])
    transform.SetTranslation([float(v) for v in lin @ centre + start[:3, 3] - centre])
    reg = _method(sampling, list(shrink), iterations)
    reg.SetInitialTransform(transform, inPlace=False)
    return _run(reg, fixed, moving, transform, "affine", started)
