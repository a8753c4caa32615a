"""`ContinuousBatcher`: requests decoded together get the tokens each gets alone (fp32), with their own
sampling settings, seeds, stop ids and hooks; a closed stream frees its row; bad requests are refused
before any work; closing stops the thread."""

from __future__ import annotations

import threading

import pytest
import torch

from omnivision.generation.continuous import ContinuousBatcher
from omnivision.generation.generate import ContextOverflowError, GenerationConfig, generate
from omnivision.generation.sampling import SamplingConfig


def _alone(model, ids, embeds, cfg, hooks=None):
    return list(generate(model, ids, embeds, cfg, hooks))


@pytest.fixture
def batcher_of():
    made = []

    def make(model, **kwargs):
        made.append(ContinuousBatcher(model, **kwargs))
        return made[-1]

    yield make
    for b in made:
        b.close()


def test_requests_together_get_the_tokens_they_get_alone(tiny_model, tiny_config, batcher_of):
    torch.manual_seed(1)
    k = tiny_config.num_image_tokens
    image = tiny_model.encode_images(torch.randn(1, 3, tiny_config.vision.image_size,
                                                 tiny_config.vision.image_size)).detach()
    requests = [  # (prompt ids, image embeddings, settings)
        ([5, 9, 17, 3, 8], None, GenerationConfig(max_new_tokens=9)),
        ([11] + [tiny_config.image_token_id] * k + [4, 6], image, GenerationConfig(max_new_tokens=6)),
        ([3, 30, 12], None, GenerationConfig(max_new_tokens=12, sampling=SamplingConfig(0.9, 20, 0.95), seed=7)),
        ([2, 2, 7, 1], None, GenerationConfig(max_new_tokens=7, sampling=SamplingConfig(repetition_penalty=1.3))),
    ]
    with torch.inference_mode():
        want = [_alone(tiny_model, ids, emb, cfg) for ids, emb, cfg in requests]
    batcher = batcher_of(tiny_model, max_batch=2, chunk=4)
    streams = [batcher.submit(ids, emb, cfg) for ids, emb, cfg in requests]
    got = [[] for _ in requests]
    # consumed round-robin, so requests join (max 2 rows) and leave while others run
    live = set(range(len(streams)))
    while live:
        for i in sorted(live):
            try:
                got[i].append(next(streams[i]))
            except StopIteration:
                live.discard(i)
    assert got == want
    assert [len(g) for g in got] == [9, 6, 12, 7]


def test_a_stop_id_and_a_per_request_hook(tiny_model, batcher_of):
    ids = [5, 9, 17, 3, 8]
    with torch.inference_mode():
        free = _alone(tiny_model, ids, None, GenerationConfig(max_new_tokens=8))
    stop = GenerationConfig(max_new_tokens=8, stop_token_ids=(free[3],))

    class Ban:
        """Forbids the free answer's first token, for one request only."""
        def constrain(self, logits):
            logits = logits.clone()
            logits[:, free[0]] = float("-inf")
            return logits

        def observe(self, logits, tokens):
            pass

    with torch.inference_mode():
        banned_alone = _alone(tiny_model, ids, None, GenerationConfig(max_new_tokens=8), Ban())
    batcher = batcher_of(tiny_model, max_batch=3)
    streams = [batcher.submit(ids, None, stop), batcher.submit(ids, None, GenerationConfig(max_new_tokens=8), Ban()),
               batcher.submit(ids, None, GenerationConfig(max_new_tokens=8))]
    got = [list(s) for s in streams]
    assert got[0] == free[:free.index(free[3])]  # ends before the stop id, which is not given
    assert got[1] == banned_alone and got[1][0] != free[0]
    assert got[2] == free


def test_closing_a_stream_frees_its_row_and_spares_the_others(tiny_model, batcher_of):
    batcher = batcher_of(tiny_model, max_batch=2)
    long = GenerationConfig(max_new_tokens=40)
    with torch.inference_mode():
        want = _alone(tiny_model, [4, 5, 6], None, GenerationConfig(max_new_tokens=20))
    cancelled = batcher.submit([1, 2, 3], None, long)
    kept = batcher.submit([4, 5, 6], None, GenerationConfig(max_new_tokens=20))
    assert len([next(cancelled) for _ in range(2)]) == 2
    cancelled.close()
    third = batcher.submit([7, 8], None, GenerationConfig(max_new_tokens=3))  # needs the freed row
    assert len(list(third)) == 3
    assert list(kept) == want
    assert batcher.batch.running == 0 and list(cancelled) == []


def test_bad_requests_are_refused_at_submit_and_close_stops_the_thread(tiny_model, tiny_config):
    before = threading.active_count()
    batcher = ContinuousBatcher(tiny_model, max_batch=1, max_len=16)
    with pytest.raises(ContextOverflowError, match="16 positions per request"):
        batcher.submit([1] * 10, None, GenerationConfig(max_new_tokens=7))
    with pytest.raises(ValueError, match="at least one token"):
        batcher.submit([], None, GenerationConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="image placeholder"):
        batcher.submit([tiny_config.image_token_id, 3], None, GenerationConfig(max_new_tokens=2))
    assert list(batcher.submit([1, 2], None, GenerationConfig(max_new_tokens=0))) == []
    assert len(list(batcher.submit([1, 2], None, GenerationConfig(max_new_tokens=3)))) == 3
    batcher.close()
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([1, 2], None, GenerationConfig(max_new_tokens=3))
    with pytest.raises(ValueError, match="max_batch"):
        ContinuousBatcher(tiny_model, max_batch=0)


class _FollowPath:
    """Hooks that make a sequence take given tokens, recording the model's own greedy choice at each
    step first: agreement per token, without one early difference deciding every later token."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.choices = path, []

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        row = logits.reshape(-1, logits.shape[-1])  # [1, V]
        self.choices.append(int(row[0].argmax()))
        forced = torch.full_like(logits, float("-inf"))
        forced.reshape(-1, logits.shape[-1])[0, self.path[len(self.choices) - 1]] = 0.0
        return forced

    def observe(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        pass


def test_bf16_batched_answers_agree_with_answers_alone():
    """The bundled nano model in bf16, eight questions about the README's scene, 32 tokens each with
    no stop, batched four at a time: at each of the 256 positions, given the tokens each question
    gets alone so far, the batched step's greedy token is the one alone in at least 99 % of them.

    Per position, because in free generation one difference changes every token after it: on the
    AMX Xeon, with the default kernels, "Describe the image." left its path at token 22 of 32 (a near
    tie in bf16), which free generation counts as 10 of 256 (246 agreed; the EPYC: all 256)."""
    from PIL import Image

    from omnivision.loader import BUNDLED, load
    from tests.conftest import REPO

    vlm = load(BUNDLED, dtype="bfloat16")
    image = Image.open(REPO / "assets" / "scene.png")
    questions = ["What shape is the object at the top left?", "What color is the object in the center?",
                 "How many objects are there?", "Describe the image.", "Is there a circle?",
                 "What is at the bottom right?", "What size is the triangle?", "Describe the scene."]
    embeds = vlm.encode_images([image])
    prompts = [vlm.prompt_ids(q, image)[0] for q in questions]
    cfg = GenerationConfig(max_new_tokens=32)
    with torch.inference_mode():
        alone = [_alone(vlm.model, ids, embeds, cfg) for ids in prompts]
    followers = [_FollowPath(path) for path in alone]
    batcher = ContinuousBatcher(vlm.model, max_batch=4)
    try:
        together = [list(s) for s in [batcher.submit(ids, embeds, cfg, f) for ids, f in zip(prompts, followers)]]
    finally:
        batcher.close()
    assert together == alone  # the forced path was taken
    same = sum(a == b for f, path in zip(followers, alone) for a, b in zip(f.choices, path))
    assert [len(f.choices) for f in followers] == [32] * 8
    assert same / 256 >= 0.99, f"{same} of 256 tokens agree"
