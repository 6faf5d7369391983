"""Flower's floor: an app whose ClientApp does nothing."""
