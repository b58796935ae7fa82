"""Failure signals in ``agsevnet predict``'s "check these": a case whose raw prediction holds two far-apart regions
of similar size is flagged with that reason (in its sidecar, the run's summary text and JSON) even though the
component filter deleted one of them; a clean single-region case is not; the flags survive a rerun that skips the
case (read back from the sidecar) and show in merged shard summaries."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from agsevnet import MODALITIES
from agsevnet.infer.predictor import Predictor, predict
from agsevnet.infer.shard import CHECK_LINES, cases_to_check, check_these, merge_summaries
from helpers import run_cli

SHAPE = (56, 32, 32)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels (125 per ml); voxel z grows towards superior
GRID = np.indices(SHAPE, dtype=float)
BIG = ((12, 16, 16), 5)  # 515 voxels, 4.1 ml
SMALL = ((44, 16, 16), 4)  # 257 voxels: half the big one, 32 voxels (64 mm) away
MIDDLE = ((28, 16, 16), 5)
FRACTION = 0.6  # the component filter keeps components of at least 60% of the largest: SMALL goes


def _ball(centre, radius) -> np.ndarray:
    return sum((g - c) ** 2 for g, c in zip(GRID, centre)) <= radius**2


class BrightIsEdema(nn.Module):
    """Stand-in network whose probability map is designed into the image: edema (probability ~1) where the
    normalised FLAIR is above 2, certain background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x[:, :1]
        off = torch.full_like(f, -20.0)
        return torch.cat([torch.zeros_like(f), off, 8 * (f - 2), off], dim=1)


def _predictor() -> Predictor:
    return Predictor(BrightIsEdema(), preprocess={"normalization": "brain", "margin": 2, "dtype": "float32"},
                     strategy="whole", divisor=1, precision="fp32", min_component_fraction=FRACTION)


def _write_case(root: Path, case_id: str, *balls) -> None:
    """A case whose four sequences are 100 in a brain filling the volume and 400 in ``balls``."""
    image = np.full(SHAPE, 100, np.int16)
    for centre, radius in balls:
        image[_ball(centre, radius)] = 400
    folder = root / case_id
    folder.mkdir(parents=True)
    for modality in MODALITIES:
        nib.save(nib.Nifti1Image(image, AFFINE), folder / f"{case_id}_{modality}.nii.gz")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flags") / "data"
    _write_case(root, "two", BIG, SMALL)
    _write_case(root, "one", MIDDLE)
    return root


def _two_far_apart(reasons: list[str]) -> bool:
    return len(reasons) == 1 and reasons[0].startswith("two far-apart tumour regions of similar size")


def test_two_far_apart_regions_are_flagged_although_the_filter_removed_one(dataset, tmp_path):
    out = tmp_path / "pred"
    summary = predict(dataset, _predictor(), out, progress=False)
    assert summary.ok
    labels = np.asarray(nib.load(out / "two.nii.gz").dataobj)
    assert labels[BIG[0]] > 0 and labels[SMALL[0]] == 0  # the component filter deleted the smaller region

    two = json.loads((out / "two.json").read_text())
    assert two["signals"]["components"] == 2 and two["signals"]["separation_mm"] == pytest.approx(64, abs=1)
    assert two["signals"]["second_ratio"] == pytest.approx(257 / 515, abs=0.01)
    assert _two_far_apart(two["flags"]) and two["check"] is True
    assert two["confidence"] >= two["confidence_threshold"]  # confident: flagged by the signal alone
    one = json.loads((out / "one.json").read_text())
    assert one["signals"]["components"] == 1 and one["flags"] == [] and one["check"] is False

    text = summary.format()
    assert "check these (1 case(s)" in text and f"    two: {two['flags'][0]}" in text
    assert "    one:" not in text
    record = json.loads((out / "predict-summary.json").read_text())
    assert record["check_these"] == ["two"] and record["check_reasons"] == {"two": two["flags"]}
    assert {c["case_id"]: c["flags"] for c in record["cases"]} == {"two": two["flags"], "one": []}

    # a rerun skips both cases: their flags come back from the sidecars
    again = predict(dataset, _predictor(), out, progress=False)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    assert {r.case_id: r.flags for r in again.results} == {"two": two["flags"], "one": []}
    assert f"    two: {two['flags'][0]}" in again.format() and "    one:" not in again.format()
    assert json.loads((out / "predict-summary.json").read_text())["check_reasons"] == {"two": two["flags"]}


def test_merged_shard_summaries_show_the_reasons(dataset, tmp_path, capsys):
    out = tmp_path / "pred"
    for i in (1, 2):
        predict(dataset, _predictor(), out, shard=(i, 2), progress=False)
    reasons = json.loads((out / "two.json").read_text())["flags"]
    assert _two_far_apart(reasons)
    merged = merge_summaries(out)
    assert merged.to_check() == [("two", merged.cases[1]["confidence"], reasons)]  # cases sorted: one, two
    assert run_cli(["predict", "--summary", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"    two: {reasons[0]}" in printed and "    one:" not in printed
    assert "low confidence" not in printed  # both confident: listed for the flag alone

def test_cases_to_check_order_reasons_and_the_printed_limit():
    rows = cases_to_check([("a", 0.9, []), ("b", 0.5, []), ("c", 0.95, ["far apart"]), ("d", None, ["low"]),
                           ("e", 0.6, ["x", "y"])], threshold=0.7)
    assert rows == [("b", 0.5, ["low confidence 0.500"]), ("e", 0.6, ["low confidence 0.600", "x", "y"]),
                    ("c", 0.95, ["far apart"]), ("d", None, ["low"])]
    assert check_these(rows, 0.7)[2] == "    e: low confidence 0.600; x; y"
    assert cases_to_check([("a", 0.1, [])], threshold=None) == []  # no threshold: flags only
    many = cases_to_check([(f"c{i:03d}", i / 1000, []) for i in range(CHECK_LINES + 5)], threshold=0.7)
    lines = check_these(many, 0.7)
    assert len(lines) == CHECK_LINES + 2 and lines[-1].startswith("    ... and 5 more")
