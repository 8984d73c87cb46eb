"""ProtoSaGa: segment 3D Gaussian Splatting scenes into objects (Proto-SaGa)."""

__version__ = "0.1.0"
