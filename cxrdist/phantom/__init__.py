"""The phantom: a synthetic ChestX-ray14 in the NIH release's layout (``generate.make_phantom``).

Real NIH metadata rows (``meta``, packaged in ``nih_metadata/``), synthetic radiographs (``anatomy``, ``findings``,
``draw``) and a JSRT/SCR-style segmentation set. It uses ``cxrdist.data``'s NIH file names; ``cxrdist.data`` never
imports it.
"""
