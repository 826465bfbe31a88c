"""TFDS builder `kitchen_play`: scripted FrankaKitchen-v1 play as RLDS."""
from datasets.kitchen_play.kitchen_play_dataset_builder import KitchenPlay, KitchenPlayConfig  # noqa: F401
