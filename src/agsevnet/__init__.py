"""agsevnet: AGSE-VNet brain-tumour segmentation of multi-modal MRI (BraTS).

Pipeline (data flows one way):
    data (read, check) -> preprocess -> train | infer -> evaluate -> report
    synth (synthetic phantoms for the demo and the tests) stands outside this flow.
"""

__version__ = "0.1.0"

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""The one internal channel order."""

REGIONS: tuple[str, ...] = ("ET", "WT", "TC")
"""Evaluation regions, in the BraTS leaderboard's order."""
