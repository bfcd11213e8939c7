"""The model, in the order it is made (timm's steps); only `vit`, `checkpoint` and `factory` need PyTorch.

registry    the registered architectures (ViTConfig) and their data configs
schedule    presets, the MAC counter, the FLOPs-ratio solver
plan        ModelPlan: architecture + method + schedule, resolved from a preset, a list or a FLOPs target
vit         the Token-Pooled ViT modules
checkpoint  reading a state dict, the checkpoint filter, strict loading
factory     create_model: plan -> modules -> weights
"""
