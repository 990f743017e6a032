"""RLDS datasets in TFDS format: the feature schemas of bridge and fractal (`schemas`), a streaming
writer for RLDS datasets (`writer`) and small synthetic datasets in the real schemas (`synthetic`).

Nothing is imported here; TensorFlow is loaded only by the functions that need it.
"""
