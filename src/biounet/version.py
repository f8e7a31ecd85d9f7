"""biounet's version: the package's, and the key of the ONNX exports it caches."""

__version__ = "0.1.0"
