"""Figures from Snapshots and Histories (matplotlib, headless)."""
from .heatmap import heatmap
from .profile import profile
from .sweep import depth_sweep

__all__ = ["heatmap", "profile", "depth_sweep"]
