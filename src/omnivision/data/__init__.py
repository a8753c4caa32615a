"""Datasets: the record types, their file formats, image checks, and the procedural shapes world.

- `records`: `Conversation`, `CaptionPair`, `PreferencePair`, `QAItem` (plain dataclasses).
- `formats`: reading (JSON array or JSONL, every field validated, errors as `file:line: problem`)
  and atomic writing; LLaVA JSON conversion.
- `images`: `check_images`, which finds missing, undecodable or escaping images at load time.
- `shapes`, `charts`, `scenes`: the procedural scenes, their rendering and their ground truth.
- `questions`, `pope`: captions, question templates with short answers, POPE-style probes.
- `generate`: `generate_shapes_dataset`, which writes a whole dataset directory.
"""

from omnivision.data.formats import (DataError, conversation_to_llava, read_captions,
                                     read_conversations, read_preferences, read_qa, write_json,
                                     write_jsonl)
from omnivision.data.images import ImageReport, check_images
from omnivision.data.records import CaptionPair, Conversation, PreferencePair, QAItem

__all__ = [
    "CaptionPair", "Conversation", "DataError", "ImageReport", "PreferencePair", "QAItem",
    "check_images", "conversation_to_llava", "read_captions", "read_conversations",
    "read_preferences", "read_qa", "write_json", "write_jsonl",
]
