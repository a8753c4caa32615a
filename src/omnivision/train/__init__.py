"""Training: one loop shared by the three stages (align, SFT, minimal-edit DPO).

`config` (the `TrainConfig` dataclass and YAML loading with `a.b=value` overrides), `schedule`
(warmup + cosine), `loop` (the `train` function and the `Task` protocol a recipe implements),
`checkpoint` (atomic, pickle-free, exactly resumable checkpoints), `distributed` (torchrun, DDP and
FSDP) and `metrics` (JSONL log and the PNG of the curves). Recipes compose these functions; there is
no trainer class to subclass: each stage composes plain functions, and a few
duplicated lines between stages are preferred to hooks in a base class.
"""
