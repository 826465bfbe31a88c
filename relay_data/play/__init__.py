"""Scripted, noisy, multi-subtask play in FrankaKitchen-v1 (our stand-in for human play data)."""
