"""The nano recipe's settings: the model's shape and the defaults the bundled model was made with."""

from __future__ import annotations

from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.data.formats import read_conversations
from omnivision.train.nano_config import NanoConfig, nano_config


def test_nano_config_gives_one_token_per_scene_cell():
    config = nano_config(256)
    assert config.vision.grid == 9 and config.projector.compression == "spatial3x3"
    assert config.num_image_tokens == 9


def test_stage_2_asks_one_or_two_questions_a_conversation_by_default(tmp_path):
    # the defaults the bundled model was made with: one or two questions a conversation, more
    # conversations a step than the other stages' batch, and the projector learning with the decoder
    cfg = NanoConfig()
    assert (cfg.sft_max_turns, cfg.sft_batch_size, cfg.batch_size) == (2, 72, 32)
    assert cfg.sft_trainable == ("projector", "language")
    generate_shapes_dataset(tmp_path, 20, cfg.seed, image_size=nano_config(256).vision.image_size,
                            sft_questions=cfg.sft_questions, max_turns=cfg.sft_max_turns)
    conversations = read_conversations(tmp_path / "sft.json")
    asked = [sum(role == "user" for role, _ in c.turns) for c in conversations]
    assert set(asked) == {1, 2}  # second questions too: the model must answer follow-ups


def test_stage_3_asks_about_fresh_scenes_by_default():
    # the defaults the bundled model was made with: captions, probes and questions about scenes
    # drawn with a seed of their own, so the pairs hold the errors the model makes on new images
    cfg = NanoConfig()
    assert cfg.dpo_scenes > 0 and cfg.dpo_kinds == ("caption", "probe", "question")
    assert len({cfg.seed, cfg.eval_seed, cfg.dpo_seed}) == 3
