"""Networks and losses (pure PyTorch, no I/O).

* :func:`build_model` / :func:`required_divisor` (:mod:`agsevnet.models.registry`): AGSE-VNet and its ablations,
  MONAI baselines; every model maps (N, 4, X, Y, Z) to logits (N, 4, X, Y, Z).
* :class:`AGSEVNet` (:mod:`agsevnet.models.nets.agsevnet`): the paper's network, equation by equation.
* :class:`CategoricalDiceLoss` / :func:`build_loss` (:mod:`agsevnet.models.losses`): eq. 12-14.
* :func:`summarize` (:mod:`agsevnet.models.summary`): layer table, parameters and FLOPs.
"""

from agsevnet.models.losses import CategoricalDiceLoss, build_loss
from agsevnet.models.nets import AGSEVNet
from agsevnet.models.registry import MODEL_NAMES, build_model, check_input_size, required_divisor
from agsevnet.models.summary import ModelSummary, count_parameters, summarize

__all__ = [
    "AGSEVNet",
    "CategoricalDiceLoss",
    "MODEL_NAMES",
    "ModelSummary",
    "build_loss",
    "build_model",
    "check_input_size",
    "count_parameters",
    "required_divisor",
    "summarize",
]
