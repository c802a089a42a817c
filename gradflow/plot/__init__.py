"""Figures from Snapshots and Histories (matplotlib, headless)."""
from .heatmap import heatmap
from .profile import profile

__all__ = ["heatmap", "profile"]
