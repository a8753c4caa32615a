"""omnivision: run, convert and inspect OmniVision-968M style vision-language models.

Public surface:

    import omnivision
    vlm = omnivision.load("path/or/hub-id")          # native dir, GGUF dir or file, hub repo id
    vlm.chat("cat.png", "What is in the image?")     # -> str
    for piece in vlm.stream("cat.png", "Describe it."):
        print(piece, end="")
"""

from omnivision.config import OmniVisionConfig, preset
from omnivision.loader import load
from omnivision.vlm import Answer, OmniVision, Turn

__all__ = ["Answer", "OmniVision", "OmniVisionConfig", "Turn", "load", "preset"]
__version__ = "0.1.0"
