"""Reading datasets: layouts, NIfTI I/O, label conventions, integrity checks (phantoms: :mod:`agsevnet.synth`)."""
