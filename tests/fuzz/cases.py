"""Fuzz cases: for an input path, a seed and an index, the mutated files and the entry-point call that
reads them. The same key `path:seed:index` always rebuilds the same case.

| path | mutated | entry point |
| --- | --- | --- |
| gguf | the language-model or the mmproj GGUF (bytes) | `omnivision info` / `run` on the folder or the file pair |
| native | config.json, tokenizer.json (JSON structure or bytes), model.safetensors (bytes) | `info` / `run` |
| image | a PNG, JPEG, WEBP, GIF or BMP file (bytes) | `omnivision run --image` (through `load_image`) |
| request | a chat-completion body (bytes, JSON structure, or the image in its data URL) | `POST /v1/chat/completions` |
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field

from tests.fuzz.json_mutations import mutate_json
from tests.fuzz.mutations import mutate
from tests.fuzz.seeds import Seeds

PATHS = ("gguf", "native", "image", "request")

RUN = ("--dtype", "float32", "--max-new-tokens", "2")
"""`run` kept cheap: float32 everywhere (no bfloat16 conversion), two answer tokens."""

MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp"}


@dataclass(frozen=True)
class Case:
    path: str
    seed: int
    index: int
    mutation: str
    """What was changed, for the failure report."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Written into the case's folder before the call."""
    argv: tuple[str, ...] = ()
    """The `omnivision` arguments; `{dir}` stands for the case's folder."""
    body: bytes | None = None
    """The request body, for the request path."""
    probe: dict | None = None
    """A misbehaviour for the worker instead of a call (the harness's own tests); `{dir}` as in argv."""

    @property
    def key(self) -> str:
        return f"{self.path}:{self.seed}:{self.index}"


def make_case(seeds: Seeds, path: str, seed: int, index: int) -> Case:
    if path not in PATHS:
        raise ValueError(f"unknown fuzz path {path!r} (one of {', '.join(PATHS)})")
    rng = random.Random(f"{path}:{seed}:{index}")  # a str seed hashes the same in every process
    mutation, files, argv, body = _MAKERS[path](seeds, rng)
    return Case(path, seed, index, mutation, files, tuple(argv), body)


def _gguf(seeds: Seeds, rng: random.Random):
    names = sorted(seeds.gguf)
    llm = next(n for n in names if "-llm-" in n)
    mmproj = next(n for n in names if "-mmproj-" in n)
    target = rng.choice(names)
    data, what = mutate(seeds.gguf[target], rng, seeds.focus[target])
    files = {**seeds.gguf, target: data, "image.png": seeds.images["rgb.png"]}
    argv = rng.choice([
        ["info", "{dir}"],
        ["info", "{dir}/" + target],
        ["run", "--model", "{dir}", "--image", "{dir}/image.png", *RUN, "hi"],
        ["run", "--model", "{dir}/" + llm, "--mmproj", "{dir}/" + mmproj, *RUN, "hi"],
    ])
    return f"{target}: {what}", files, argv, None


def _native(seeds: Seeds, rng: random.Random):
    names = ("config.json", "model.safetensors", "tokenizer.json")
    target = rng.choice(names)
    original = seeds.native_file(target)
    if target.endswith(".json") and rng.random() < 0.6:
        data, what = mutate_json(json.loads(original), rng)
    else:
        data, what = mutate(original, rng, seeds.focus.get(target))
    files = {name: seeds.native_file(name) for name in names}
    files.update({target: data, "image.png": seeds.images["rgb.png"]})
    argv = rng.choice([["info", "{dir}"], ["run", "--model", "{dir}", "--image", "{dir}/image.png", *RUN, "hi"]])
    return f"{target}: {what}", files, argv, None


def _image(seeds: Seeds, rng: random.Random):
    name = rng.choice(sorted(seeds.images))
    data, what = mutate(seeds.images[name], rng, rng.choice([None, 64]))
    argv = ["run", "--model", str(seeds.native), "--image", "{dir}/" + name, *RUN, "What is it?"]
    return f"{name}: {what}", {name: data}, argv, None


def _request(seeds: Seeds, rng: random.Random):
    body = rng.choice(seeds.bodies)
    how = rng.choice(["bytes", "json", "json", "image"])
    if how == "bytes":
        data, what = mutate(json.dumps(body).encode(), rng)
    elif how == "json":
        data, what = mutate_json(body, rng)
    else:
        name = rng.choice(sorted(seeds.images))
        image, what = mutate(seeds.images[name], rng, rng.choice([None, 64]))
        url = f"data:{MIME[name.rsplit('.', 1)[1]]};base64," + base64.b64encode(image).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
        data = json.dumps({**seeds.bodies[0], "messages": [{"role": "user", "content": content}]}).encode()
        what = f"{name} in a data URL: {what}"
    return f"{how}: {what}", {}, [], data


_MAKERS = {"gguf": _gguf, "native": _native, "image": _image, "request": _request}
