"""Inference: probabilities of one preprocessed image (:mod:`.engine`), whole cases to label maps on the input
grid (:mod:`.predictor`), and postprocessing (:mod:`.postprocess`).

Public API: :func:`agsevnet.infer.engine.predict_probabilities`, :func:`agsevnet.infer.predictor.segment`,
:func:`agsevnet.infer.predictor.predict`, :class:`agsevnet.infer.predictor.Predictor`.
"""
