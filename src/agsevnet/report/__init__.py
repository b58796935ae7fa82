"""Reporting: the paper's figures (:mod:`agsevnet.report.figures`) and the self-contained HTML report of a run
(:mod:`agsevnet.report.html`, behind ``agsevnet report``)."""
