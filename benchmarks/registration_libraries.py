"""Rigid registration for ``agsevnet prepare``: SimpleITK (the project's own path) against ANTsPy and itk-elastix,
by accuracy against a known truth and by speed, on real BraTS cases re-recorded as clinical acquisitions.

The issue behind ``prepare`` asked to choose the registration library "by measured accuracy and speed on these
cases"; this script is that measurement (results: ``docs/prepare_registration.md``).

Ground truth. Each case (the BraTS volumes of ``--data``) is recorded as ``tests/test_prepare_realdata.py`` does:
every sequence in its own random rigid pose (``random_pose(rng, 12.0, 15.0, centre)``: up to 12 deg about the
brain's centre and 15 mm) on its own 0.9 x 0.9 x 5 mm axial grid (``acquire(..., size=(256, 256, 36))``, field of
view shifted by up to 10 mm), numpy seed 16 for every case (the test's). A pose maps a point of the acquisition's
header (LPS mm) to the point of the original volume it shows, so for a point ``x`` of the T1ce header the true
point of the moving sequence is ``inv(pose_m) @ pose_t1ce @ x`` (registrations here give fixed point -> moving
point, SimpleITK's direction).

Task A (sequence -> T1ce, what ``prepare`` does three times per case): FLAIR, T1 and T2 rigidly onto the T1ce.
The inputs are made as ``prepare_images`` (``prepare/pipeline.py``) makes them: ``canonical`` voxel order,
``to_sitk``, then ``register.isotropic`` (2 mm registration grids, anti-aliased); every library gets these same
two images. Error: the distance between the found and the true moving point, mean and max over the brain voxels
(``images.max(0) > 0`` of the original, every 20th, put through the T1ce's pose), in mm; a mean above 5 mm is
reported as a failure.

Task B (T1ce -> SRI24 atlas, ``--task B``): the moved T1ce and the unmoved original T1ce (1 mm, BraTS grid) each
rigidly onto the 2 mm atlas brain (``_atlas_images``, as ``prepare`` does for skull-stripped inputs). No true
answer is known there (where the atlas puts a brain is the question), so the figure is consistency: the transform
found from the moved acquisition, composed with the T1ce's pose, against the one found from the original, mean
and max over the atlas brain (every 20th voxel), in mm; ``orig_vs_grid``: how far the latter is from the BraTS
position itself (mean mm).

Libraries (``--libraries``):

- ``sitk``: ``agsevnet.prepare.register.rigid(fixed, moving, init="identity")`` (Task B: ``init="moments"``),
  Mattes MI 32 bins, 5 % random samples, shrink 4/2/1, regular step gradient descent, as ``prepare`` calls it;
- ``ants``: ``ants.registration(fixed, moving, type_of_transform="Rigid")`` with its defaults (Mattes MI, 32 bins,
  20 % random samples, 4 levels 6/4/2/1, started from the centres of mass), ``--random-seed`` fixed;
- ``ants-dense``: the same with ``type_of_transform="DenseRigid"`` (every voxel sampled);
- ``elastix``: ``itk.elastix_registration_method`` with ``itk.ParameterObject.GetDefaultParameterMap("rigid")``
  unchanged (advanced Mattes MI, 4 levels, adaptive stochastic gradient descent, 2048 random samples).

``--inputs native`` gives Task A's libraries the acquisitions themselves (0.9 x 0.9 x 5 mm, canonical voxel
order) instead of the 2 mm copies: how each library does without the project's ``isotropic`` step.

Seconds: wall time of the registration call alone (images already in memory and converted to the library's image
type; ``isotropic`` is shared by all and timed apart). Before the cases a sanity check registers one image to
itself and to a copy whose header is shifted by (6, -4, 9) mm (true transform: x -> x + shift), so that each
library's transform direction is checked (an inverted transform would be off by 2 x 11.5 mm).

Run it (one thread, low priority; SimpleITK, ANTsPy and itk-elastix in a separate environment, the project by
PYTHONPATH; it needs no torch)::

    python3 -m venv /work/exp/regvenv
    /work/exp/regvenv/bin/pip install numpy nibabel SimpleITK antspyx itk-elastix
    OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 PYTHONPATH=src:tests nice -n 19 \\
        /work/exp/regvenv/bin/python benchmarks/registration_libraries.py --data ../shared/data/brats-real \\
        --cases BraTS20_Training_001 BraTS2021_00000 Brats18_TCIA05_396_1 BraTS19_CBICA_ABM_1 --task A B

A library that is not installed is skipped (and said so). Reads the cases, writes nothing in the repository (ANTs
writes its transform files to the system's temporary folder and they are removed); ``--json PATH`` also writes the
rows there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")
SEED = 16  # the numpy seed of every case (tests/test_prepare_realdata.py)
LIB_SEED = 20261205  # the libraries' random sampling
POINT_STEP = 20  # every 20th brain voxel
FAILURE_MM = 5.0
SHIFT = np.array([6.0, -4.0, 9.0])  # the sanity check's header shift (mm)


# ---------------------------------------------------------------------------------------------------- geometry


def apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """4x4 ``matrix`` applied to ``pts`` (N x 3)."""
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def errors(found: np.ndarray, truth: np.ndarray, pts: np.ndarray) -> tuple[float, float]:
    d = np.linalg.norm(apply(found, pts) - apply(truth, pts), axis=1)
    return float(d.mean()), float(d.max())


def matrix_from_points(transform_point) -> np.ndarray:
    """The 4x4 matrix of an affine map given as a function of one 3-point."""
    m = np.eye(4)
    origin = np.asarray(transform_point([0.0, 0.0, 0.0]), float)
    for axis in range(3):
        e = [0.0, 0.0, 0.0]
        e[axis] = 1.0
        m[:3, axis] = np.asarray(transform_point(e), float) - origin
    m[:3, 3] = origin
    return m


def source_image(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image as ``prepare_images`` makes it from a file: canonical voxel order, then ``to_sitk``."""
    from agsevnet.prepare.geometry import to_sitk
    from agsevnet.prepare.pipeline import canonical

    data, affine = canonical(data, affine)
    return to_sitk(data, affine)


# --------------------------------------------------------------------------------------------------- libraries


def run_sitk(fixed, moving, init: str):
    from agsevnet.prepare import register

    started = time.perf_counter()
    reg = register.rigid(fixed, moving, init=init)
    return reg.matrix, time.perf_counter() - started


def to_ants(img):
    import ants

    from agsevnet.prepare.geometry import from_sitk

    return ants.from_numpy(np.ascontiguousarray(from_sitk(img), np.float32), origin=tuple(img.GetOrigin()),
                           spacing=tuple(img.GetSpacing()),
                           direction=np.asarray(img.GetDirection(), float).reshape(3, 3))


def run_ants(fixed, moving, kind: str = "Rigid"):
    import ants

    ants.config._random_seed = LIB_SEED  # antsRegistration --random-seed (set_ants_deterministic refuses "Rigid")
    started = time.perf_counter()
    out = ants.registration(fixed, moving, type_of_transform=kind, verbose=False)
    seconds = time.perf_counter() - started
    files = list(out["fwdtransforms"]) + list(out["invtransforms"])
    (path,) = out["fwdtransforms"]  # a rigid registration: one affine .mat (fixed point -> moving point)
    tx = ants.read_transform(path)
    matrix = matrix_from_points(lambda p: tx.apply_to_point(tuple(p)))
    for f in set(files):
        Path(f).unlink(missing_ok=True)
    return matrix, seconds


def to_itk(img):
    import itk
    import SimpleITK as sitk

    out = itk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(img), np.float32))
    out.SetOrigin(tuple(float(v) for v in img.GetOrigin()))
    out.SetSpacing(tuple(float(v) for v in img.GetSpacing()))
    out.SetDirection(itk.GetMatrixFromArray(np.asarray(img.GetDirection(), float).reshape(3, 3)))
    return out


def elastix_matrix(params) -> np.ndarray:
    """The 4x4 matrix (fixed point -> moving point) of elastix's result: an EulerTransform (angles, translation,
    centre of rotation; ComputeZYX false, as ITK's Euler3DTransform)."""
    import SimpleITK as sitk

    assert params.GetParameter(0, "Transform")[0] == "EulerTransform", params.GetParameter(0, "Transform")
    p = [float(v) for v in params.GetParameter(0, "TransformParameters")]
    centre = [float(v) for v in params.GetParameter(0, "CenterOfRotationPoint")]
    zyx = params.GetParameter(0, "ComputeZYX") if "ComputeZYX" in params.GetParameterMap(0) else ("false",)
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    t.SetComputeZYX(zyx[0] == "true")
    t.SetRotation(*p[:3])
    t.SetTranslation(p[3:6])
    return matrix_from_points(lambda x: t.TransformPoint(tuple(x)))


def run_elastix(fixed, moving):
    import itk

    po = itk.ParameterObject.New()
    po.AddParameterMap(itk.ParameterObject.GetDefaultParameterMap("rigid"))
    started = time.perf_counter()
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=po, log_to_console=False,
                                                number_of_threads=1)
    seconds = time.perf_counter() - started
    return elastix_matrix(result), seconds


def available(lib: str) -> str | None:
    """None, or why ``lib`` cannot run."""
    module = {"sitk": "SimpleITK", "ants": "ants", "ants-dense": "ants", "elastix": "itk"}[lib]
    try:
        m = __import__(module)
        if lib == "elastix":
            m.ElastixRegistrationMethod  # noqa: B018 (itk-elastix, not plain itk)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def register_with(lib: str, fixed, moving, *, atlas: bool = False):
    """(matrix, seconds) of ``lib`` registering two SimpleITK images; conversion not timed."""
    if lib == "sitk":
        return run_sitk(fixed, moving, "moments" if atlas else "identity")
    if lib in ("ants", "ants-dense"):
        return run_ants(to_ants(fixed), to_ants(moving), "Rigid" if lib == "ants" else "DenseRigid")
    if lib == "elastix":
        return run_elastix(to_itk(fixed), to_itk(moving))
    raise ValueError(lib)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("SimpleITK", "antspyx", "itk-elastix", "itk-core", "numpy", "nibabel"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ------------------------------------------------------------------------------------------------------- cases


def load_case(folder: Path, case: str) -> np.ndarray:
    import nibabel as nib

    return np.stack([np.asarray(nib.load(folder / case / f"{case}_{m}.nii.gz").dataobj, np.float32)
                     for m in MODALITIES])


def acquisitions(images: np.ndarray):
    """The case recorded as tests/test_prepare_realdata.py records it: {modality: Acquisition}, the brain's
    centre (LPS) and the brain mask."""
    from prepare_helpers import acquire, brain_centre_lps, random_pose

    mask = images.max(axis=0) > 0
    rng = np.random.default_rng(SEED)
    centre = brain_centre_lps(mask)
    acq = {}
    for c, m in enumerate(MODALITIES):
        pose = random_pose(rng, 12.0, 15.0, centre)
        acq[m] = acquire(images[c], pose, centre + rng.uniform(-10, 10, 3), spacing=(0.9, 0.9, 5.0),
                         size=(256, 256, 36))
    return acq, centre, mask


def grid_points(mask: np.ndarray) -> np.ndarray:
    """LPS points of every POINT_STEP-th voxel of ``mask`` on the BraTS grid."""
    from agsevnet.prepare.atlas import BRATS_AFFINE
    from agsevnet.prepare.geometry import LPS

    idx = np.argwhere(mask)[::POINT_STEP].astype(float)
    return apply(LPS @ BRATS_AFFINE, idx)


# ------------------------------------------------------------------------------------------------------- tasks


def sanity(libs, img) -> list[dict]:
    """``img`` to itself and to a copy with its header shifted by SHIFT (true: x -> x + SHIFT)."""
    shifted = img.__class__(img)
    shifted.SetOrigin([float(v) for v in np.asarray(img.GetOrigin()) + SHIFT])
    import SimpleITK as sitk

    # points: every 10th voxel of the image's brain (its non-zero voxels), as LPS points
    arr = sitk.GetArrayFromImage(img)
    idx = np.argwhere(arr > 0)[::10][:, ::-1].astype(float)
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(v)) for v in idx])
    rows = []
    for lib in libs:
        for name, moving, truth in (("self", img, np.eye(4)), ("shift", shifted, np.r_[np.c_[np.eye(3), SHIFT],
                                                                                     [[0, 0, 0, 1]]])):
            matrix, seconds = register_with(lib, img, moving)
            mean, worst = errors(matrix, truth, pts)
            rows.append({"check": name, "library": lib, "mean_mm": mean, "max_mm": worst, "seconds": seconds})
            print(f"  sanity {name:5s} {lib:10s} mean {mean:7.3f} mm  max {worst:7.3f} mm  {seconds:6.1f} s",
                  flush=True)
    return rows


def task_a(case: str, acq, mask, libs, inputs: str = "isotropic") -> list[dict]:
    from agsevnet.prepare import register

    t = time.perf_counter()
    reg = {m: source_image(acq[m].data, acq[m].affine) for m in MODALITIES}
    if inputs == "isotropic":
        reg = {m: register.isotropic(img) for m, img in reg.items()}
    iso_seconds = (time.perf_counter() - t) / len(MODALITIES)
    pts = apply(np.linalg.inv(acq["t1ce"].pose), grid_points(mask))  # brain points in the T1ce header's LPS
    rows = []
    for m in ("flair", "t1", "t2"):
        truth = np.linalg.inv(acq[m].pose) @ acq["t1ce"].pose
        for lib in libs:
            try:
                matrix, seconds = register_with(lib, reg["t1ce"], reg[m])
                mean, worst = errors(matrix, truth, pts)
                error = None
            except Exception as exc:  # noqa: BLE001
                matrix = np.full((4, 4), np.nan)
                mean = worst = seconds = float("nan")
                error = f"{type(exc).__name__}: {exc}"
            row = {"task": "A", "inputs": inputs, "case": case, "sequence": m, "library": lib, "mean_mm": mean,
                   "max_mm": worst,
                   "seconds": seconds, "isotropic_seconds": iso_seconds, "error": error,
                   "matrix": matrix.tolist(), "truth": truth.tolist()}
            rows.append(row)
            print_row(row)
    return rows


def task_b(case: str, images: np.ndarray, acq, libs) -> list[dict]:
    from agsevnet.prepare import register
    from agsevnet.prepare.atlas import BRATS_AFFINE, atlas_brain_mask
    from agsevnet.prepare.brain import is_skull_stripped
    from agsevnet.prepare.pipeline import _atlas_images

    moved = register.isotropic(source_image(acq["t1ce"].data, acq["t1ce"].affine))
    original = register.isotropic(source_image(images[MODALITIES.index("t1ce")], BRATS_AFFINE))
    stripped = is_skull_stripped(acq["t1ce"].data, (0.9, 0.9, 5.0))
    atlas = _atlas_images(stripped)
    pts = grid_points(atlas_brain_mask())
    rows = []
    for lib in libs:
        try:
            found_moved, s_moved = register_with(lib, atlas, moved, atlas=True)
            found_orig, s_orig = register_with(lib, atlas, original, atlas=True)
            mean, worst = errors(acq["t1ce"].pose @ found_moved, found_orig, pts)
            off_grid = errors(found_orig, np.eye(4), pts)[0]
            error = None
        except Exception as exc:  # noqa: BLE001
            mean = worst = s_moved = s_orig = off_grid = float("nan")
            error = f"{type(exc).__name__}: {exc}"
        row = {"task": "B", "case": case, "sequence": "t1ce->atlas", "library": lib, "mean_mm": mean,
               "max_mm": worst, "seconds": s_moved, "seconds_original": s_orig, "orig_vs_grid_mm": off_grid,
               "skull_stripped": bool(stripped), "error": error}
        rows.append(row)
        print_row(row)
    return rows


def print_row(row: dict) -> None:
    flag = "  FAILED" if not (row["mean_mm"] <= FAILURE_MM) else ""
    extra = f"  orig_vs_grid {row['orig_vs_grid_mm']:5.2f} mm" if "orig_vs_grid_mm" in row else ""
    err = f"  ({row['error']})" if row.get("error") else ""
    print(f"{row['task']}  {row['case']:22s} {row['sequence']:11s} {row['library']:10s} mean {row['mean_mm']:7.3f} "
          f"max {row['max_mm']:7.3f} mm  {row['seconds']:6.1f} s{extra}{flag}{err}", flush=True)


def summary(rows: list[dict], libs) -> None:
    for task in ("A", "B"):
        sel = [r for r in rows if r["task"] == task]
        if not sel:
            continue
        print(f"\nTask {task}: medians per library (failures: mean error > {FAILURE_MM} mm)")
        print(f"{'library':10s} {'n':>3s} {'mean_mm':>8s} {'max_mm':>8s} {'seconds':>8s} {'worst_mean':>10s} "
              f"{'failures':>8s}")
        if task == "A" and sel[0].get("inputs") == "isotropic":
            iso = np.nanmedian([x["isotropic_seconds"] for x in sel])
            print(f"(isotropic() per image, shared by all: median {iso:.1f} s)")
        for lib in libs:
            r = [x for x in sel if x["library"] == lib]
            if not r:
                continue
            mean = np.array([x["mean_mm"] for x in r])
            fails = int(np.sum(~(mean <= FAILURE_MM)))
            print(f"{lib:10s} {len(r):3d} {np.nanmedian(mean):8.3f} {np.nanmedian([x['max_mm'] for x in r]):8.3f} "
                  f"{np.nanmedian([x['seconds'] for x in r]):8.1f} {np.nanmax(mean):10.3f} {fails:8d}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/brats-real"))
    p.add_argument("--cases", nargs="+", default=["BraTS20_Training_001", "BraTS2021_00000",
                                                   "Brats18_TCIA05_396_1", "BraTS19_CBICA_ABM_1"])
    p.add_argument("--libraries", nargs="+", default=["sitk", "ants", "elastix"],
                   choices=["sitk", "ants", "ants-dense", "elastix"])
    p.add_argument("--task", nargs="+", default=["A"], choices=["A", "B"])
    p.add_argument("--inputs", default="isotropic", choices=["isotropic", "native"],
                   help="Task A's images: the 2 mm isotropic() copies prepare registers (default), or the "
                        "acquisitions themselves (0.9 x 0.9 x 5 mm, canonical voxel order)")
    p.add_argument("--no-sanity", action="store_true", help="skip the self/shift check")
    p.add_argument("--json", type=Path, help="also write the rows here (outside the repository)")
    args = p.parse_args(argv)

    print("versions:", json.dumps(versions()))
    print("threads: OMP_NUM_THREADS=%s ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=%s" % (
        os.environ.get("OMP_NUM_THREADS"), os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")))
    libs = []
    for lib in args.libraries:
        why = available(lib)
        if why:
            print(f"skipping {lib}: {why}")
        else:
            libs.append(lib)
    rows: list[dict] = []
    checks: list[dict] = []
    for i, case in enumerate(args.cases):
        if not (args.data / case).is_dir():
            print(f"skipping {case}: {args.data / case} not found")
            continue
        t = time.perf_counter()
        images = load_case(args.data, case)
        acq, _centre, mask = acquisitions(images)
        print(f"\n{case}: recorded in {time.perf_counter() - t:.1f} s", flush=True)
        if i == 0 and not args.no_sanity:
            from agsevnet.prepare import register

            checks = sanity(libs, register.isotropic(source_image(acq["t1ce"].data, acq["t1ce"].affine)))
        if "A" in args.task:
            rows += task_a(case, acq, mask, libs, args.inputs)
        if "B" in args.task:
            rows += task_b(case, images, acq, libs)
    summary(rows, libs)
    if args.json:
        args.json.write_text(json.dumps({"versions": versions(), "sanity": checks, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
