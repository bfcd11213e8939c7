"""What is done with model files, each returning a report (`format()`, `to_json()`).

info       what a file, a plan, the presets and the architectures are
bench      latency like trtexec, models interleaved
compare    outputs of two backends, Polygraphy-style
evaluate   top-1/top-5 on an image folder
sweep      accuracy against cost for every method and ratio
finetune   distillation from the dense model (its PyTorch loop: distill)
"""
