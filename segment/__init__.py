"""segment: foreground/background image segmentation built from custom Keras 3 pieces.

Importing the package registers every custom Keras class and function, so a saved model loads
with `keras.saving.load_model(path)` in safe mode and without `custom_objects`.
"""

from segment._startup import tensorflow_start_up_hidden

with tensorflow_start_up_hidden():
    from segment import layers, losses, model, optimizers  # noqa: F401  (registration)

__version__ = "0.1.0"
