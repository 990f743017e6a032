"""Robot data for pg-vla: RLDS datasets (BridgeData V2, fractal/RT-1) and their loading.

Importing this package is cheap: TensorFlow and tensorflow-datasets are imported only inside the
modules and functions that read or write RLDS data.
"""
