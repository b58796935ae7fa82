"""Model weights shipped inside the package (see :mod:`agsevnet.infer.bundled` and ``MODEL_CARD.md``)."""
