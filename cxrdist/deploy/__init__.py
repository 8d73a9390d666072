"""Use a trained model: load a run dir or an exported model, predict on image files, export (issue #19).

This package sits above ``methods/`` (it builds a method's networks) and beside ``job``; ``launch/predict.py``
and ``launch/export.py`` are its command lines.
"""
