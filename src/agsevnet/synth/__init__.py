"""Synthetic data: generators of BraTS-like cases for the demo, the tests and anyone without real data.

Not part of the runtime data path (``agsevnet.data`` reads real datasets); nothing outside the demo, the
``agsevnet phantom`` command, tests and benchmarks imports it.

- :mod:`agsevnet.synth.phantom`: skull-stripped brains with gliomas on the BraTS grid (``make_phantom``,
  ``write_phantom_dataset``).
"""
