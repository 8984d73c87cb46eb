"""Rendering: one interface, two backends (gsplat on CUDA, the portable torch rasterizer elsewhere)."""

from .api import RenderOutput, choose_backend, rasterize, render
from .settings import RasterSettings

__all__ = ["RasterSettings", "RenderOutput", "choose_backend", "rasterize", "render"]
