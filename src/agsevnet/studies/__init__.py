"""Studies that combine stages (train -> predict -> evaluate) into one experiment: cross-validation.

They sit above the pipeline stages and only call their public functions; the report draws what they wrote.
"""
