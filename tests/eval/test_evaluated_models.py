"""The model backends: `LocalModel` gives what `OmniVision.answer` gives one sample at a time (stop
strings, first image only, seeded sampling independent of batching, greedy unless `do_sample` and a
temperature above 0); `EndpointModel` sends every image as a data URL with the task's settings
(temperature 0 when the task does not sample) and returns the answers in order, with a bounded
number of requests in flight."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

import omnivision
from omnivision.chat_client import ChatClient
from omnivision.eval.evaluated_models import EndpointModel, LocalModel, sample_seed
from omnivision.eval.tasks import Generation, get_task
from omnivision.eval.tasks.base import cut_at_stop
from tests.chat_server import ChatServer
from tests.eval.tiny_run import sample, write_checkpoint

RED, GREEN, BLUE = (Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255)))


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return omnivision.load(write_checkpoint(tmp_path_factory.mktemp("models")), dtype="float32")


def test_cut_at_stop():
    assert cut_at_stop(" yes\n\nbecause", ["\n\n"]) == "yes"
    assert cut_at_stop("xAyB", ["B", "A"]) == "x"  # the earliest stop string, whichever is listed first
    assert cut_at_stop("  a b  ", ["", "\n\n"]) == "a b"  # an empty stop string is no stop


def test_greedy_batch_equals_answers_one_by_one(vlm):
    # stop strings the random model's output does contain, so cutting is on the path
    first = vlm.answer(RED, "What is shown?", max_new_tokens=sample("x", [], "x").generation.max_new_tokens).text
    said = first.strip()
    assert len(said) >= 2, "the random model said too little; the test proves nothing"
    until = (said[len(said) // 2], "\n")
    samples = [sample("0", [RED], "What is shown?", until=until),
               sample("1", [], "Say something.", until=until),
               sample("2", [GREEN], "Which colour?", until=until, max_new_tokens=5),
               sample("3", [BLUE], "Is it blue?", until=())]
    got = LocalModel(vlm).predict(samples)
    expected = [vlm.answer(s.images[0] if s.images else None, s.prompt, stop=s.generation.until,
                           max_new_tokens=s.generation.max_new_tokens).text for s in samples]
    assert got == expected
    assert got[0] != said  # the stop string was met and the answer cut


def test_several_images_the_first_is_used(vlm):
    model = LocalModel(vlm)
    two = sample("m", [GREEN, RED], "Compare <image 1> and <image 2>.")
    assert model.images_used(two) == 1 and model.images_used(sample("n", [], "x")) == 0
    [got] = model.predict([two])
    assert got == vlm.answer(GREEN, two.prompt, stop=("\n\n",), max_new_tokens=8).text


def test_the_sampling_rule():
    # sampled only with do_sample and a temperature above 0 (lmms-eval's wrappers, the reference)
    assert Generation(8, temperature=0.7, do_sample=True).samples
    assert not Generation(8, temperature=0.2, do_sample=False).samples
    assert not Generation(8, temperature=0.0, do_sample=True).samples
    assert not get_task("mmvet").generation.samples  # temperature 0.2, do_sample false: greedy


def test_mmvet_settings_decode_greedily(vlm):
    mmvet = sample("v", [RED], "Describe it.", temperature=0.2, top_p=1.0, max_new_tokens=6)
    greedy = vlm.answer(RED, "Describe it.", stop=("\n\n",), max_new_tokens=6).text
    # the same whatever the seed: no sampling happens
    assert LocalModel(vlm, seed=1).predict([mmvet]) == LocalModel(vlm, seed=2).predict([mmvet]) == [greedy]


def test_sampled_tasks_use_a_seed_per_sample(vlm):
    hot = dict(temperature=0.2, do_sample=True, top_p=1.0, max_new_tokens=6)
    a, b = sample("a", [RED], "Describe it.", **hot), sample("b", [RED], "Describe it.", **hot)
    model = LocalModel(vlm, seed=7)
    alone = model.predict([b])
    together = model.predict([sample("g", [BLUE], "Greedy."), a, b])
    assert together[2] == alone[0]  # the same whatever else is in the batch
    assert sample_seed(7, a) != sample_seed(7, b)
    assert together[1:] == [vlm.answer(RED, "Describe it.", stop=("\n\n",), max_new_tokens=6,
                                       temperature=0.2, top_p=1.0, seed=sample_seed(7, s)).text
                            for s in (a, b)]
    greedy = vlm.answer(RED, "Describe it.", stop=("\n\n",), max_new_tokens=6).text
    assert greedy not in together[1:]  # it did sample


def test_beam_search_is_refused(vlm):
    with pytest.raises(ValueError, match="num_beams=3"):
        LocalModel(vlm).predict([sample("x", [], "x", num_beams=3)])


def _image(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB")


def test_endpoint_sends_images_as_data_urls_and_keeps_the_order():
    lock, flight = threading.Lock(), {"now": 0, "max": 0}

    def script(n, body):
        text = body["messages"][0]["content"]
        text = text if isinstance(text, str) else text[-1]["text"]
        with lock:
            flight["now"] += 1
            flight["max"] = max(flight["max"], flight["now"])
        # later prompts answer sooner, so replies come back out of order
        time.sleep(0.25 - 0.05 * int(text[-1]))
        with lock:
            flight["now"] -= 1
        return 200, f"  answer to {text}\n\nignored"

    server = ChatServer(script)
    try:
        model = EndpointModel(ChatClient(server.url, api_key_env=None, retries=0), "peer-vlm",
                              concurrency=2, seed=5)
        samples = [sample("0", [RED, GREEN], "q0"), sample("1", [], "q1", max_new_tokens=3),
                   sample("2", [BLUE], "q2", temperature=0.7, do_sample=True, top_p=0.9),
                   sample("3", [RED], "q3", temperature=0.2, top_p=1.0),  # MM-Vet's: greedy
                   sample("4", [GREEN], "q4")]
        got = model.predict(samples)
        assert got == [f"answer to q{i}" for i in range(5)]
        assert flight["max"] == 2
        bodies = {(b["messages"][0]["content"] if isinstance(b["messages"][0]["content"], str)
                   else b["messages"][0]["content"][-1]["text"]): b for b in server.bodies()}
        first = bodies["q0"]["messages"][0]["content"]
        # every image, in order, before the text; PNG keeps the pixels exact
        assert [p["type"] for p in first] == ["image_url", "image_url", "text"]
        pixels = [_image(p["image_url"]["url"]).getpixel((0, 0)) for p in first[:2]]
        assert pixels == [(255, 0, 0), (0, 255, 0)]
        plain = bodies["q1"]
        assert plain["messages"][0]["content"] == "q1"  # no image: plain text
        assert (plain["max_tokens"], plain["temperature"], plain["stop"]) == (3, 0.0, ["\n\n"])
        assert "seed" not in plain and "top_p" not in plain
        hot = bodies["q2"]
        assert (hot["temperature"], hot["top_p"], hot["seed"]) == (0.7, 0.9, sample_seed(5, samples[2]))
        mmvet = bodies["q3"]
        assert mmvet["temperature"] == 0.0 and "seed" not in mmvet and "top_p" not in mmvet
        assert {b["model"] for b in server.bodies()} == {"peer-vlm"}
        assert model.describe()["served_model"] == "served-model"
        assert model.images_used(samples[0]) == 2
    finally:
        server.close()
