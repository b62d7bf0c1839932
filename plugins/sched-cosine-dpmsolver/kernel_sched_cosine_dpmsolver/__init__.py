"""Cosine-schedule SDE-DPM-Solver++ as used by Stable Audio Open."""

from .cosine import CosineDPMSolverMultistepScheduler

__all__ = ["CosineDPMSolverMultistepScheduler"]
