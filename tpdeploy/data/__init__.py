"""Images in and out of models, without PyTorch.

preprocess   encoded images -> model input, with the model's recorded data config
samples      structured sample images (validation, timing, calibration without user data)
datasets     image folders and their labels, decoded in parallel with inference
augment      training images: their sources, timm's training augmentation, batches decoded ahead
"""
