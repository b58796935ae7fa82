"""Prediction: whole cases (files or arrays) to label maps on exactly the input grid.

Per case: read -> the checkpoint's own preprocessing (:func:`agsevnet.preprocess.preprocess_case` with the
checkpoint's ``"preprocess"`` entry, which crops to the brain and may resample to a coarser grid) ->
:func:`~agsevnet.infer.engine.predict_probabilities` -> probabilities resampled back onto the native crop
(trilinear) -> labels (argmax of the classes, or thresholds of the nested regions of a region-based model) ->
postprocessing (:func:`~agsevnet.infer.postprocess.keep_main_components`,
:func:`~agsevnet.infer.postprocess.relabel_small_enhancing`) -> :func:`~agsevnet.preprocess.uncrop` onto the
input grid -> labels in the user's convention.

The inference settings (strategy, overlap, TTA, postprocessing) default to the checkpoint's ``"inference"``
entry: the settings its validation used when training chose it (see :mod:`agsevnet.train.trainer`). Training's
validation calls :meth:`Predictor.labels_on_crop`, the same path.

- :func:`segment` works on arrays in memory (notebooks).
- :func:`predict` is the batch runner behind ``agsevnet predict``: one NIfTI per case, ``OUT_DIR/<case>.nii.gz``
  (uint8, same shape, affine, qform/sform and codes as the input), optionally ``OUT_DIR/<case>_prob.nii.gz``
  (4D float32, last axis = internal classes in the order :data:`PROBABILITY_CLASSES`; NIfTI-1 has no float16
  type, nibabel cannot write one, and other readers would not read it). Existing outputs are
  skipped unless ``overwrite``; a case that fails is reported and the run goes on; the model is loaded once and
  the next case is read in a background thread while the current one is computed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agsevnet import MODALITIES
from agsevnet.data.case import Case, CaseSpec, Geometry
from agsevnet.data.labels import CONVENTIONS, INTERNAL_LABELS, from_internal
from agsevnet.errors import AgsevnetError, ConfigError, DataError
from agsevnet.infer.postprocess import (
    COMPONENT_RULES,
    argmax_classes,
    component_weights,
    keep_main_components,
    regions_to_classes,
    regions_to_labels,
    relabel_small_enhancing,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from agsevnet.preprocess import Preprocessed

PROBABILITY_CLASSES: tuple[str, ...] = tuple(INTERNAL_LABELS.values())
"""Order of the classes on the last axis of ``<case>_prob.nii.gz``: background, NCR/NET, edema, enhancing."""

DEFAULT_ROI = (128, 128, 64)


@dataclass
class Prediction:
    """One case's prediction on the input grid: internal labels (uint8, (X, Y, Z)) and, when asked for,
    probabilities (float32, (num_classes, X, Y, Z)), the uncertainty map (float32 (X, Y, Z) in [0, 1]) and the
    confidence figure with its parts (:func:`agsevnet.infer.uncertainty.case_confidence`); always the failure
    signals and the reasons to check the case they give."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    strategy: str
    uncertainty: np.ndarray | None = None
    confidence: dict[str, float | int] | None = None
    signals: dict[str, Any] | None = None
    """The failure signals of :func:`agsevnet.infer.signals.case_signals`, on the labels before postprocessing."""
    flags: list[str] = field(default_factory=list)
    """The reasons to check this case (:func:`agsevnet.infer.signals.flag_reasons`); empty when none applies."""


class Predictor:
    """A model loaded once, its preprocessing and the inference settings; segments one case at a time.

    Build it with :meth:`from_checkpoint` (a path or a loaded checkpoint dict) or directly from a module.
    ``channels_last`` (default on) runs the network in ``channels_last_3d`` memory format: the default AGSE-VNet's
    whole pass over a BraTS brain crop took 17% less CPU time with it in bf16 on this project's CPUs.
    ``backend`` (``torch``, ``onnxruntime``, ``openvino``): the runtime that evaluates the network
    (:mod:`agsevnet.infer.backends`); everything else is the same code path.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocess: Mapping[str, Any] | None = None,
        channels: Sequence[str] = MODALITIES,
        divisor: int | None = None,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.5,
        strategy: str = "auto",
        tta: bool | int | Sequence[Sequence[int]] = False,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        et_threshold: int = 0,
        sw_batch_size: int = 1,
        channels_last: bool = True,
        memory_budget: int | None = None,
        output: str = "classes",
        min_component_fraction: float = 0.0,
        component_rule: str = "size",
        backend: str = "torch",
    ):
        import torch

        from agsevnet.infer.engine import STRATEGIES, resolve_precision, tta_flips

        device = torch.device(device)
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is available to PyTorch")
        if overlap < 0 or overlap >= 1:
            raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
        if et_threshold < 0:
            raise ConfigError(f"the enhancing-tumour threshold must be >= 0 voxels, got {et_threshold}")
        if output not in ("classes", "regions"):
            raise ConfigError(f"model output must be 'classes' or 'regions', got {output!r}")
        if not 0 <= min_component_fraction <= 1:
            raise ConfigError(f"the component fraction must be in [0, 1], got {min_component_fraction}")
        if component_rule not in COMPONENT_RULES:
            raise ConfigError(f"component rule must be one of {', '.join(COMPONENT_RULES)}, got {component_rule!r}")
        self.output = output
        self.min_component_fraction = float(min_component_fraction)
        self.component_rule = component_rule
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.tta = tta_flips(tta)  # validates early
        self.preprocess = dict(preprocess or {})
        self.channel_index = [MODALITIES.index(c) for c in channels]
        self.divisor = divisor
        self.roi_size = tuple(int(r) for r in (roi_size or DEFAULT_ROI))
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ConfigError(f"roi size must be three positive integers, got {roi_size}")
        self.overlap = overlap
        self.strategy = strategy
        self.et_threshold = int(et_threshold)
        self.sw_batch_size = sw_batch_size
        self.channels_last = channels_last
        self.memory_budget = memory_budget
        model = model.to(device).eval()
        self.backend = backend
        if backend != "torch":  # another runtime behind the same call (agsevnet.infer.backends), on the CPU
            from agsevnet.infer.backends import backend_model
            from agsevnet.infer.engine import model_divisor

            if device.type != "cpu":
                raise ConfigError(f"--backend {backend} runs on the CPU; use --device cpu or --backend torch")
            # onnxruntime computes in float32; OpenVINO in bf16 where the precision resolved to bf16
            self.precision = self.precision if backend == "openvino" else "fp32"
            model = backend_model(backend, model, model_divisor(model, divisor), precision=self.precision)
            self.channels_last = channels_last = False  # the runtime takes contiguous arrays
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | Mapping[str, Any], **options: Any) -> Predictor:
        """A predictor for a checkpoint file or loaded dict: its architecture, weights, input channels,
        preprocessing and patch size (the default sliding-window roi); ``options`` as for the constructor."""
        from agsevnet.checkpoint import load_checkpoint, model_from_checkpoint
        from agsevnet.models import required_divisor

        path = None
        if not isinstance(checkpoint, Mapping):
            path = Path(checkpoint)
            checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path)
        options = {k: v for k, v in options.items() if v is not None}
        for key, value in inference_settings(checkpoint).items():
            options.setdefault(key, value)
        options.setdefault("preprocess", checkpoint["preprocess"])
        options.setdefault("channels", checkpoint["channels"])
        options.setdefault("divisor", required_divisor(dict(checkpoint["model"])))
        if options.get("roi_size") is None and checkpoint.get("patch_size"):
            options["roi_size"] = checkpoint["patch_size"]
        return cls(model, **options)

    def probabilities(self, image: np.ndarray, pad_value: float | Sequence[float] = 0.0, *,
                      strategy: str | None = None, members: list | None = None) -> torch.Tensor:
        """Probabilities (C, x, y, z) of one preprocessed image in :data:`agsevnet.MODALITIES` order; ``pad_value``:
        the image's background per channel in that order (what a whole pass pads with); ``strategy``: one the
        caller already chose with :meth:`strategy_for` (None: this predictor's setting, ``auto`` chosen here).

        An :class:`~agsevnet.models.ensemble.Ensemble` (a bundled model with several weight sets) is run member by
        member and the members' probabilities averaged, which is what the ensemble module computes, window by
        window (blending is linear) and costs the same; ``members``: a list that then receives each member's
        probabilities (their disagreement is a failure signal, :func:`agsevnet.infer.signals.member_agreement`)."""
        import torch

        from agsevnet.infer.engine import predict_probabilities
        from agsevnet.models.ensemble import Ensemble

        if self.channel_index != list(range(len(MODALITIES))):
            image = image[self.channel_index]
            if isinstance(pad_value, Sequence):
                pad_value = [pad_value[i] for i in self.channel_index]

        def run(model: torch.nn.Module) -> torch.Tensor:
            return predict_probabilities(
                model, image, roi_size=self.roi_size, overlap=self.overlap,
                strategy=self.strategy if strategy is None else strategy, tta=self.tta, device=self.device,
                amp=self.precision, sw_batch_size=self.sw_batch_size,
                divisor=self.divisor, memory_budget=self.memory_budget, channels_last=self.channels_last,
                activation="sigmoid" if self.output == "regions" else "softmax", pad_value=pad_value,
            )

        if not isinstance(self.model, Ensemble):
            return run(self.model)
        total = None
        for member in self.model.members:
            prob = run(member)
            if members is not None:
                members.append(prob)
            total = prob.clone() if total is None else total.add_(prob)
        return total.div_(len(self.model.members))

    def strategy_for(self, shape: Sequence[int]) -> str:
        """The strategy used for a crop of spatial ``shape``."""
        from agsevnet.infer.engine import choose_strategy

        return choose_strategy(self.model, shape, self.roi_size, strategy=self.strategy, device=self.device,
                               divisor=self.divisor, memory_budget=self.memory_budget)

    def preprocess_case(self, case: Case) -> Preprocessed:
        """The checkpoint's preprocessing of a loaded case (cropped to the brain, normalised)."""
        from agsevnet.preprocess import preprocess_case

        return preprocess_case(case, **self.preprocess)

    def decode_on_crop(self, pre: Preprocessed, *, strategy: str | None = None,
                       members: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(raw labels, class probabilities)`` of a preprocessed case on its brain crop at the input resolution:
        network probabilities (resampled back from a coarse grid when the preprocessing resampled) decoded into
        internal labels (argmax of the classes, or thresholds of the nested regions), *before* postprocessing.
        The failure signals (:mod:`agsevnet.infer.signals`) are measured on these: the component filter would
        delete the evidence of a second far-apart region. ``strategy``, ``members``: see :meth:`probabilities`
        (the members' probabilities stay on the network's grid)."""
        from agsevnet.preprocess import background_values, resample_to_shape

        prob = resample_to_shape(self.probabilities(pre.image, background_values(pre.meta), strategy=strategy,
                                                    members=members), pre.crop_shape)
        if self.output == "regions":
            regions = prob.numpy()
            return regions_to_labels(regions), regions_to_classes(regions)
        return argmax_classes(prob).numpy(), prob.numpy()

    def postprocess(self, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Decoded ``labels`` postprocessed with this predictor's settings: components scoring under
        ``min_component_fraction`` of the best (ranked by ``component_rule`` on the class probabilities
        ``classes``) removed, then small enhancing relabelled (``et_threshold``). ``labels`` is not modified."""
        weights = None
        if self.min_component_fraction > 0 and self.component_rule != "size":
            weights = component_weights(classes, self.component_rule)
        labels = keep_main_components(labels, self.min_component_fraction, weights)
        del weights
        return relabel_small_enhancing(labels, self.et_threshold)

    def labels_on_crop(self, pre: Preprocessed, *, strategy: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, class probabilities)`` of a preprocessed case on its brain crop at the input resolution:
        :meth:`decode_on_crop` then :meth:`postprocess`. Prediction and training's validation both go through
        here. ``strategy``: see :meth:`probabilities`."""
        raw, classes = self.decode_on_crop(pre, strategy=strategy)
        return self.postprocess(raw, classes), classes

    def predict_preprocessed(self, pre: Preprocessed, *, with_probabilities: bool = False,
                             with_uncertainty: bool = False) -> Prediction:
        """Internal labels (and optionally probabilities; with ``with_uncertainty`` the normalised-entropy map
        and the confidence figure of :mod:`agsevnet.infer.uncertainty`) of a preprocessed case, on its original
        grid, with the failure signals and the reasons to check the case
        (:func:`~agsevnet.infer.signals.case_signals` and :func:`~agsevnet.infer.signals.flag_reasons` on the
        decoded labels before postprocessing; no brain mask: the crop is the brain's bounding box, so this costs
        one connected-component labelling of the crop)."""
        from agsevnet.infer.signals import case_signals, flag_reasons, member_agreement
        from agsevnet.preprocess import uncrop

        box, shape = pre.box, pre.original_shape
        strategy = self.strategy_for(pre.image.shape[1:])  # chosen once: reported and used
        members: list = []
        raw, prob = self.decode_on_crop(pre, strategy=strategy, members=members)
        geometry = pre.geometry
        signals = case_signals(raw, prob, None, geometry.affine, geometry.zooms)
        if len(members) > 1:
            signals["member_dice"] = member_agreement(members)
        del members
        cropped = self.postprocess(raw, prob)
        del raw
        labels = uncrop(cropped, box, shape, fill=0)
        full = uncertainty = confidence = None
        if with_uncertainty:
            from agsevnet.infer.uncertainty import case_confidence, normalised_entropy

            entropy = normalised_entropy(prob)  # on the crop, where the model looked
            confidence = case_confidence(cropped, prob, entropy)
            uncertainty = uncrop(entropy, box, shape, fill=0.0)  # outside the crop: certain background
            del entropy
        if with_probabilities:
            # Outside the crop the model saw nothing: certain background.
            full = np.stack([uncrop(p, box, shape, fill=1.0 if c == 0 else 0.0) for c, p in enumerate(prob)])
        return Prediction(labels=labels, probabilities=full, strategy=strategy, uncertainty=uncertainty,
                          confidence=confidence, signals=signals, flags=flag_reasons(signals))

    def predict_case(self, case: Case, *, with_probabilities: bool = False,
                     with_uncertainty: bool = False) -> Prediction:
        """Internal labels (and optionally probabilities, the uncertainty map and confidence) of a loaded case on
        its input grid."""
        return self.predict_preprocessed(self.preprocess_case(case), with_probabilities=with_probabilities,
                                         with_uncertainty=with_uncertainty)


INFERENCE_KEYS: tuple[str, ...] = ("strategy", "overlap", "tta", "min_component_fraction", "component_rule",
                                   "et_threshold")
"""The ``inference`` config keys a checkpoint records and :class:`Predictor` takes."""


def inference_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The Predictor options a checkpoint was validated with: its ``"inference"`` entry (strategy, overlap, TTA,
    postprocessing) and its output kind (``"classes"`` or ``"regions"``). Checkpoints written before the entry
    existed were validated with the sliding window: that is what they get."""
    saved = dict(checkpoint.get("inference") or {})
    out: dict[str, Any] = {k: saved[k] for k in INFERENCE_KEYS if saved.get(k) is not None}
    if "inference" not in checkpoint:
        out.setdefault("strategy", "sliding")
    out["output"] = checkpoint.get("output", "classes")
    return out


def _as_predictor(checkpoint_or_model: Any, options: dict[str, Any]) -> Predictor:
    from torch import nn

    if isinstance(checkpoint_or_model, Predictor):
        if options:
            raise TypeError("options cannot be given with a ready Predictor")
        return checkpoint_or_model
    if isinstance(checkpoint_or_model, nn.Module):
        return Predictor(checkpoint_or_model, **options)
    return Predictor.from_checkpoint(checkpoint_or_model, **options)


def _check_voxel_size(spacing: Any) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats (mm), or :class:`ConfigError` saying what was given."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"spacing must be three positive numbers (voxel size in mm per axis), got {spacing!r}")
    return values


def segment(
    images: np.ndarray,
    checkpoint_or_model: str | Path | Mapping[str, Any] | nn.Module | Predictor | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    convention: str | None = None,
    return_probabilities: bool = False,
    **options: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment raw images in memory.

    ``images``: float array (4, X, Y, Z) in FLAIR, T1, T1ce, T2 order, raw intensities (not normalised).
    ``spacing``: the voxel size in mm along the array's three axes (a NIfTI header's zooms). **It defaults to
    1 mm**, the BraTS grid; pass the real one for any other scan (e.g. ``spacing=(2, 2, 2)`` for a volume
    averaged to 2 mm): a model whose preprocessing resamples to its own voxel size (the bundled model works at
    2 mm) resamples from this spacing, so a wrong one shows it the anatomy at the wrong scale (on a real case
    averaged to 2 mm and passed as 1 mm, Dice fell from .853/.955/.927 to .697/.906/.800). A model without such
    resampling works on the array's own voxels whatever the spacing. Must be three positive finite numbers
    (:class:`~agsevnet.errors.ConfigError` otherwise).
    ``checkpoint_or_model``: None (the bundled model, :data:`agsevnet.infer.bundled.DEFAULT_MODEL`), a bundled
    model's name, a checkpoint path or dict, a :class:`Predictor`, or an ``nn.Module`` (put in eval mode on ``device``; pass ``preprocess=`` to match its training, the default is ``preprocess_case``'s).
    ``options``: the :class:`Predictor` settings (``strategy``, ``tta``, ``device``, ``precision``,
    ``et_threshold``, ...).

    Returns uint8 labels (X, Y, Z) on the same grid, internal (0 background, 1 NCR/NET, 2 edema,
    3 enhancing) or in ``convention`` ("brats2020": 1/2/4, "brats2023", "msd"); with
    ``return_probabilities``, also the float32 probabilities (4, X, Y, Z) in internal class order.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] != len(MODALITIES):
        raise ValueError(f"images must be (4, X, Y, Z) in {'/'.join(MODALITIES)} order, got shape {images.shape}")
    if convention is not None and convention not in CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    zooms = _check_voxel_size(spacing)  # before a model is loaded
    if checkpoint_or_model is None or isinstance(checkpoint_or_model, str):
        from agsevnet.infer.bundled import resolve_model

        checkpoint_or_model = resolve_model(checkpoint_or_model)
    predictor = _as_predictor(checkpoint_or_model, options)
    # Only the zooms matter (preprocess_case resamples from them); the labels come back on the array's own voxels.
    grid = np.diag([*zooms, 1.0])
    geometry = Geometry(shape=tuple(images.shape[1:]), affine=grid, qform=grid, qform_code=0, sform=grid,
                        sform_code=0, zooms=zooms)
    spec = CaseSpec(case_id="array", scheme="files", images={}, label=None, label_convention="brats2020")
    result = predictor.predict_case(Case(spec=spec, images=images, label=None, geometry=geometry),
                                    with_probabilities=return_probabilities)
    labels = result.labels if convention is None else from_internal(result.labels, convention)
    return (labels, result.probabilities) if return_probabilities else labels


# ---------------------------------------------------------------------------------------------- batch runner


@dataclass
class CaseResult:
    """What happened to one case: ``written``, ``skipped`` (outputs existed) or ``failed`` (``message``)."""

    case_id: str
    status: str
    output: Path | None = None
    message: str = ""
    seconds: float = 0.0
    strategy: str = ""
    labels: str = ""  # the label convention written (written cases)
    confidence: float | None = None  # agsevnet.infer.uncertainty's figure (written cases; skipped: from the sidecar)
    flags: list[str] = field(default_factory=list)  # agsevnet.infer.signals.flag_reasons (skipped: from the sidecar)


@dataclass
class PredictSummary:
    """All cases of a :func:`predict` run (of its shard, with ``--shard``), and the confidence below which a case
    is listed as one to check (as is a case with a warning sign: :func:`agsevnet.infer.signals.flag_reasons`)."""

    results: list[CaseResult] = field(default_factory=list)
    confidence_threshold: float | None = None
    shard: tuple[int, int] | None = None

    def by_status(self, status: str) -> list[CaseResult]:
        return [r for r in self.results if r.status == status]

    def low_confidence(self) -> list[CaseResult]:
        """Written or skipped cases whose confidence is below the threshold, least confident first."""
        if self.confidence_threshold is None:
            return []
        low = [r for r in self.results if r.status != "failed" and r.confidence is not None
               and r.confidence < self.confidence_threshold]
        return sorted(low, key=lambda r: r.confidence)

    def to_check(self) -> list[tuple[str, float | None, list[str]]]:
        """``(case id, confidence, reasons)`` of the written or skipped cases to check (confidence below the
        threshold, or a warning sign), least confident first (:func:`agsevnet.infer.shard.cases_to_check`)."""
        from agsevnet.infer.shard import cases_to_check

        return cases_to_check([(r.case_id, r.confidence, r.flags) for r in self.results if r.status != "failed"],
                              self.confidence_threshold)

    def to_record(self, **extra: Any) -> dict[str, Any]:
        """The JSON summary file's content (:mod:`agsevnet.infer.shard` merges these): counts and every case."""
        from agsevnet.infer.shard import SUMMARY_FORMAT
        from agsevnet.infer.uncertainty import CONFIDENCE_DEFINITION

        check = self.to_check()
        return {
            "format": SUMMARY_FORMAT,
            "shard": list(self.shard) if self.shard else None,
            **extra,
            "confidence_threshold": self.confidence_threshold,
            "confidence_definition": CONFIDENCE_DEFINITION,
            "counts": {s: len(self.by_status(s)) for s in ("written", "skipped", "failed")},
            "check_these": [case_id for case_id, _, _ in check],
            "check_reasons": {case_id: reasons for case_id, _, reasons in check},
            "cases": [{"case_id": r.case_id, "status": r.status, "output": str(r.output) if r.output else None,
                       "message": r.message, "seconds": round(r.seconds, 3), "strategy": r.strategy,
                       "labels": r.labels, "confidence": r.confidence, "flags": r.flags} for r in self.results],
        }

    @property
    def ok(self) -> bool:
        return not self.by_status("failed")

    def format(self) -> str:
        """A human-readable summary: counts, mean time per written case, the label convention of every written
        case, every failure, and the cases to check with their reasons."""
        written, skipped, failed = (self.by_status(s) for s in ("written", "skipped", "failed"))
        line = f"{len(written)} written, {len(skipped)} skipped, {len(failed)} failed"
        if skipped:
            line += " (skipped: outputs exist; --overwrite redoes them)"
        if written:
            line += f"; {sum(r.seconds for r in written) / len(written):.1f} s per written case"
        from agsevnet.data.labels import describe

        lines = [line]
        by_labels: dict[str, list[str]] = {}
        for r in written:
            by_labels.setdefault(r.labels, []).append(r.case_id)
        for convention, ids in by_labels.items():  # the label convention of every written case
            what = describe(convention) if convention in CONVENTIONS else convention or "unknown"
            shown = (f"all {len(ids)} written case(s)" if len(by_labels) == 1 else
                     ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else ""))
            lines.append(f"  labels {what}: {shown}")
        lines += [f"  failed: {r.case_id}: {r.message}" for r in failed]
        from agsevnet.infer.shard import check_these

        lines += check_these(self.to_check(), self.confidence_threshold)
        return "\n".join(lines)


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """``OUT_DIR/<case>.nii.gz`` and ``OUT_DIR/<case>_prob.nii.gz``."""
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}_prob.nii.gz"


def uncertainty_output(out_dir: Path, case_id: str) -> Path:
    """``OUT_DIR/<case>_uncertainty.nii.gz`` (``--save-uncertainty``; the report's viewer looks for this name)."""
    return out_dir / f"{case_id}_uncertainty.nii.gz"


def sidecar_path(out_dir: Path, case_id: str) -> Path:
    """``OUT_DIR/<case>.json``: the model, settings, label convention, seconds, confidence, failure signals and
    flags of a prediction."""
    return out_dir / f"{case_id}.json"


def _sidecar_check(path: Path) -> tuple[float | None, list[str]]:
    """The confidence and the flags recorded in an existing sidecar (a skipped case keeps them in the summary);
    ``(None, [])`` where the sidecar is missing or unreadable, no flags where it predates them."""
    import json

    try:
        record = json.loads(path.read_text())
        value, flags = record.get("confidence"), record.get("flags")
    except (OSError, ValueError, AttributeError):
        return None, []
    flags = [str(f) for f in flags] if isinstance(flags, list) else []
    return (float(value) if isinstance(value, (int, float)) else None), flags


def _model_name(checkpoint: Any) -> str:
    if isinstance(checkpoint, (str, Path)):
        return str(checkpoint)
    if isinstance(checkpoint, Mapping):
        return f"checkpoint dict (model {dict(checkpoint.get('model') or {}).get('name', '?')}, step " \
               f"{checkpoint.get('step', '?')})"
    return type(checkpoint).__name__


def _settings(predictor: Predictor) -> dict[str, Any]:
    """The inference settings of a predictor, for the sidecars and the summary."""
    return {"output": predictor.output, "strategy": predictor.strategy, "overlap": predictor.overlap,
            "tta_flips": len(predictor.tta), "roi_size": list(predictor.roi_size) if predictor.roi_size else None,
            "et_threshold": predictor.et_threshold, "min_component_fraction": predictor.min_component_fraction,
            "component_rule": predictor.component_rule,
            "precision": str(predictor.precision), "device": str(predictor.device),
            "preprocess": dict(predictor.preprocess)}


def find_cases(inputs: str | Path | None, files: Mapping[str, str | Path | None] | None = None,
               case_id: str | None = None, labels: str | None = None) -> list[CaseSpec]:
    """The cases to segment: a case or dataset folder (any layout :func:`agsevnet.data.layouts.discover`
    reads), or four explicit files ``files={"flair": ..., "t1": ..., "t1ce": ..., "t2": ...}`` (their label
    convention ``labels``, needed where their names do not tell: :func:`~agsevnet.data.layouts.case_from_files`)."""
    from agsevnet.data.layouts import case_from_files, discover

    given = {k: v for k, v in (files or {}).items() if v is not None}
    if given:
        if inputs is not None:
            raise ConfigError("give either INPUT or the four files --flair --t1 --t1ce --t2, not both")
        missing = [m for m in MODALITIES if m not in given]
        if missing:
            raise ConfigError(f"explicit input needs all four files; missing {', '.join('--' + m for m in missing)}")
        return [case_from_files(given["flair"], given["t1"], given["t1ce"], given["t2"], case_id=case_id,
                                label_convention=labels)]
    if inputs is None:
        raise ConfigError("give an INPUT folder or the four files --flair --t1 --t1ce --t2")
    path = Path(inputs)
    if not path.exists():
        raise DataError("input not found", path)
    return discover(path)


def _spec_location(spec: CaseSpec) -> Path | str:
    if spec.folder is not None:
        return spec.folder
    first = next(iter(spec.images.values()), None)
    return first.path if first is not None else spec.case_id


def predict(
    inputs: str | Path | None,
    checkpoint: str | Path | Mapping[str, Any] | Predictor,
    out_dir: str | Path,
    *,
    files: Mapping[str, str | Path | None] | None = None,
    case_id: str | None = None,
    labels: str | None = None,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = True,
    raise_errors: bool = False,
    cases: Sequence[CaseSpec] | None = None,
    save_uncertainty: bool = False,
    confidence_threshold: float | None = None,
    shard: tuple[int, int] | str | None = None,
    write_summary: bool = True,
    **options: Any,
) -> PredictSummary:
    """Segment every case of ``inputs`` (see :func:`find_cases`) into ``out_dir``.

    ``labels``: the output convention ("brats2020", "brats2023", "msd"); default: each case's own (that of
    its source layout). ``options``: the :class:`Predictor` settings. A case whose outputs exist is skipped
    unless ``overwrite``; a case that fails is recorded with its error (which names the file) and the run goes
    on, unless ``raise_errors``. Returns the summary (``summary.ok`` is False when any case failed).

    Every written case gets ``<case>.json`` (model, settings, label convention, seconds, the confidence figure of
    :mod:`agsevnet.infer.uncertainty`, the failure ``signals`` of :mod:`agsevnet.infer.signals` and the ``flags``
    they raise, ``check``); ``save_uncertainty`` also writes ``<case>_uncertainty.nii.gz``.
    ``confidence_threshold`` (default :data:`~agsevnet.infer.uncertainty.DEFAULT_CONFIDENCE_THRESHOLD`): cases
    below it, and cases with a flag, are listed as "check these" with their reasons. ``shard``: ``(I, N)`` or ``"I/N"``, only the cases of that shard
    (:mod:`agsevnet.infer.shard`). ``write_summary``: write ``predict-summary[-shard-I-of-N].json`` into
    ``out_dir`` at the end (atomically).
    """
    from agsevnet.fsutil import write_json_atomic
    from agsevnet.infer.shard import parse_shard, select_shard, summary_name
    from agsevnet.infer.uncertainty import CONFIDENCE_DEFINITION, DEFAULT_CONFIDENCE_THRESHOLD

    from agsevnet.progress import progress_bar

    from agsevnet.data.io import load_case
    from agsevnet.data.nifti import save_labels, save_nifti

    if labels is not None and labels not in CONVENTIONS:
        raise ConfigError(f"--labels must be one of {', '.join(CONVENTIONS)}, got {labels!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("output folder is a file", out_dir)
    if isinstance(shard, str):
        shard = parse_shard(shard)
    threshold = DEFAULT_CONFIDENCE_THRESHOLD if confidence_threshold is None else float(confidence_threshold)
    if not 0 <= threshold <= 1:
        raise ConfigError(f"--confidence-threshold must be in [0, 1], got {threshold}")
    started = time.time()
    predictor = _as_predictor(checkpoint, options)
    specs = list(cases) if cases is not None else find_cases(inputs, files, case_id, labels)
    if shard is not None:
        specs = select_shard(specs, *shard)
    settings = _settings(predictor)
    model_name = _model_name(checkpoint)

    summary = PredictSummary(confidence_threshold=threshold, shard=tuple(shard) if shard else None)
    todo: list[CaseSpec] = []
    for spec in specs:
        seg_path, prob_path = output_paths(out_dir, spec.case_id)
        done = seg_path.exists() and (prob_path.exists() or not save_probabilities) and (
            uncertainty_output(out_dir, spec.case_id).exists() or not save_uncertainty)
        if done and not overwrite:
            confidence, flags = _sidecar_check(sidecar_path(out_dir, spec.case_id))
            summary.results.append(CaseResult(spec.case_id, "skipped", seg_path, confidence=confidence, flags=flags))
        elif spec.problems:
            summary.results.append(CaseResult(spec.case_id, "failed", message="; ".join(spec.problems)))
        else:
            todo.append(spec)

    load = functools.partial(load_case, with_label=False)
    bar = progress_bar(total=len(todo), unit="case", desc="predict", disable=not progress or not todo)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="agsevnet-read") as reader:
        pending: Future[Case] | None = reader.submit(load, todo[0]) if todo else None
        for i, spec in enumerate(todo):
            start = time.perf_counter()
            current, pending = pending, (reader.submit(load, todo[i + 1]) if i + 1 < len(todo) else None)
            bar.set_postfix_str(spec.case_id)
            seg_path, prob_path = output_paths(out_dir, spec.case_id)
            try:
                case = current.result()
                del current  # the future holds the case too
                geometry = case.geometry
                pre = predictor.preprocess_case(case)
                del case  # the raw images are not needed any more: keep the peak memory down
                result = predictor.predict_preprocessed(pre, with_probabilities=save_probabilities,
                                                        with_uncertainty=True)
                del pre
                if save_probabilities:
                    save_nifti(prob_path, np.moveaxis(result.probabilities, 0, -1), geometry, np.float32)
                unc_path = uncertainty_output(out_dir, spec.case_id)
                if save_uncertainty:
                    save_nifti(unc_path, result.uncertainty, geometry, np.float32)
                convention = labels or spec.label_convention
                seconds = time.perf_counter() - start
                confidence = result.confidence or {}
                write_json_atomic(sidecar_path(out_dir, spec.case_id), _jsonable({
                    "case_id": spec.case_id, "prediction": seg_path.name,
                    "uncertainty": unc_path.name if save_uncertainty else None,
                    "probabilities": prob_path.name if save_probabilities else None,
                    "labels": convention, **confidence, "confidence_definition": CONFIDENCE_DEFINITION,
                    "confidence_threshold": threshold,
                    "check": confidence.get("confidence", 1.0) < threshold or bool(result.flags),
                    "flags": result.flags, "signals": result.signals,
                    "model": model_name, "settings": {**settings, "strategy_used": result.strategy},
                    "seconds": round(seconds, 3), "input": str(_spec_location(spec)),
                }))
                # the label map last: it marks the case done (a rerun skips it), so its sidecar is there too
                save_labels(seg_path, from_internal(result.labels, convention), geometry)
                summary.results.append(CaseResult(spec.case_id, "written", seg_path, seconds=seconds,
                                                  strategy=result.strategy, labels=convention,
                                                  confidence=confidence.get("confidence"), flags=result.flags))
                del result
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch; reported below
                if raise_errors:
                    raise
                message = str(exc) if isinstance(exc, AgsevnetError) else (
                    f"{_spec_location(spec)}: {type(exc).__name__}: {exc}")
                summary.results.append(CaseResult(spec.case_id, "failed", message=message))
                bar.write(f"failed: {spec.case_id}: {message}")
            bar.update(1)
    bar.close()
    order = {spec.case_id: i for i, spec in enumerate(specs)}
    summary.results.sort(key=lambda r: order.get(r.case_id, len(order)))
    if write_summary:
        write_json_atomic(out_dir / summary_name(summary.shard), _jsonable(summary.to_record(
            model=model_name, settings=settings, started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            seconds=round(time.time() - started, 3))))
    return summary


def _jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists and anything JSON cannot hold as its string."""
    import json

    return json.loads(json.dumps(obj, default=str))
