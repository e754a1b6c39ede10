"""grendel_py: distributed 3D Gaussian Splatting training."""

__version__ = "0.1.0"
