"""segment: foreground/background image segmentation built from custom Keras 3 pieces."""

__version__ = "0.1.0"
