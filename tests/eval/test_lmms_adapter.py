"""The lmms-eval adapter. lmms-eval is not installed in CI, so most tests import the adapter against
a small stand-in `lmms_eval` package (only the names the adapter uses: the base class `lmms`,
`Instance`, `ModelManifest`), placed on sys.path for the test; they check the work the adapter does
itself: request -> image, prompt and decoding settings -> stripped answer, in batches. The last
test runs against the real lmms-eval and is skipped where it is not installed."""

from __future__ import annotations

import importlib
import sys
import tomllib
from importlib.metadata import EntryPoint
from types import SimpleNamespace

import pytest
from PIL import Image

from omnivision.data.formats import read_qa
from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.loader import BUNDLED
from omnivision.weights.native import is_native

from tests.conftest import REPO

ADAPTER = "omnivision.eval.lmms_adapter"

FAKE_LMMS_EVAL = {
    "__init__.py": "",
    "api/__init__.py": "",
    "api/model.py": '''
import abc


class CacheHook:
    def __init__(self):
        self.calls = []

    def add_partial(self, kind, args, result):
        self.calls.append((kind, args, result))


class lmms(abc.ABC):
    is_simple = True

    def __init__(self):
        self.task_dict = {}
        self.cache_hook = CacheHook()

    @abc.abstractmethod
    def generate_until(self, requests): ...

    @abc.abstractmethod
    def loglikelihood(self, requests): ...

    @abc.abstractmethod
    def generate_until_multi_round(self, requests): ...
''',
    "api/instance.py": '''
from dataclasses import dataclass, field


@dataclass
class Instance:
    request_type: str
    arguments: tuple
    idx: int
    metadata: dict = field(default_factory=dict)

    @property
    def args(self):
        return self.arguments
''',
    "models/__init__.py": "",
    "models/registry_v2.py": '''
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelManifest:
    model_id: str
    simple_class_path: str = None
    chat_class_path: str = None
    aliases: tuple = ()
''',
}


def _forget_lmms_eval(monkeypatch):
    for name in [n for n in sys.modules if n == ADAPTER or n.split(".")[0] == "lmms_eval"]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def adapter(tmp_path, monkeypatch):
    """The adapter module, imported against the stand-in lmms_eval."""
    for rel, text in FAKE_LMMS_EVAL.items():
        path = tmp_path / "lmms_eval" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _forget_lmms_eval(monkeypatch)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(ADAPTER)
    for name in [n for n in sys.modules if n == ADAPTER or n.split(".")[0] == "lmms_eval"]:
        del sys.modules[name]  # the stand-ins; monkeypatch then puts back what was loaded before


class FakeVLM:
    """Records what the adapter asks; answers with padded text that runs past a stop string."""

    def __init__(self):
        self.batches, self.sampled = [], []

    def answer_batch(self, images, prompts, *, max_new_tokens):
        self.batches.append((list(images), list(prompts), max_new_tokens))
        return [f"  answer to {p}  \n\nand more" for p in prompts]

    def answer(self, image, prompt, **kwargs):
        self.sampled.append((image, prompt, kwargs))
        return SimpleNamespace(text=" sampled ")


@pytest.fixture
def fake_load(monkeypatch):
    calls = []

    def load_stub(source, **kwargs):
        calls.append((source, kwargs))
        return FakeVLM()
    monkeypatch.setattr("omnivision.loader.load", load_stub)
    return calls


def image(colour) -> Image.Image:
    return Image.new("RGB", (8, 8), colour)


DOCS = {"task": {"test": [{"images": [image("red"), image("blue")]}, {"images": []},
                          {"images": [image("green").convert("L")]}]}}


def request(context, gen_kwargs, doc_id, n=0):
    from lmms_eval.api.instance import Instance

    visual = lambda doc: doc["images"]  # noqa: E731 - what a task's doc_to_visual is
    return Instance("generate_until", (context, gen_kwargs, visual, doc_id, "task", "test"), n,
                    {"task": "task", "doc_id": doc_id, "repeats": 1})


def model(adapter, **kwargs):
    m = adapter.OmniVisionLMMs(**kwargs)
    m.task_dict = DOCS
    return m


def test_construction(adapter, fake_load):
    m = adapter.OmniVisionLMMs(device="cpu", batch_size="3")
    assert m.batch_size == 3 and m.is_simple
    assert fake_load == [(BUNDLED, {"device": "cpu", "dtype": "auto", "gguf_type": None, "mmproj": None})]
    adapter.OmniVisionLMMs(pretrained="some/repo", device="cpu", dtype="float32")
    assert fake_load[-1][0] == "some/repo" and fake_load[-1][1]["dtype"] == "float32"
    with pytest.raises(ValueError, match="unknown model_args for omnivision: conv_template"):
        adapter.OmniVisionLMMs(conv_template="x")
    for bad in ("auto", 0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            adapter.OmniVisionLMMs(batch_size=bad)


def test_generate_until_batches_and_cuts(adapter, fake_load):
    m = model(adapter, batch_size=2)
    greedy = {"max_new_tokens": 16, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    requests = [request("q0", greedy, 0, 0),
                request("q1", {**greedy, "max_new_tokens": 8}, 1, 1),
                request("q2", {**greedy, "until": "answer"}, 2, 2),
                request("q3", {**greedy, "until": ["more", "to"]}, 0, 3)]
    out = m.generate_until(requests)
    # cut at the earliest stop string, then stripped
    assert out == ["answer to q0", "answer to q1", "", "answer"]
    batches = m.vlm.batches
    # max_new_tokens 16: q0, q2 | q3 (batch size 2); 8: q1
    assert [(b[1], b[2]) for b in batches] == [(["q0", "q2"], 16), (["q3"], 16), (["q1"], 8)]
    first, third = batches[0][0]
    assert first.getpixel((0, 0)) == (255, 0, 0)  # the first of the doc's two images
    assert third.mode == "RGB"  # a grey image is converted
    assert batches[2][0] == [None]  # a doc without images: a text-only prompt
    assert [c[2] for c in m.cache_hook.calls] == out


def test_sampling_requests(adapter, fake_load):
    m = model(adapter)
    kwargs = {"max_new_tokens": 5, "temperature": 0.7, "do_sample": True, "top_p": 0.9,
              "until": ["\n"]}
    assert m.generate_until([request("q", kwargs, 0)]) == ["sampled"]
    [(img, prompt, settings)] = m.vlm.sampled
    assert prompt == "q" and img.getpixel((0, 0)) == (255, 0, 0)
    seed = settings.pop("seed")
    assert settings == {"stop": ("\n",), "max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9}
    m.generate_until([request("q", kwargs, 0)])
    assert m.vlm.sampled[-1][2]["seed"] == seed  # seeded per request: a rerun samples the same
    m.vlm.sampled.pop()
    # a temperature without do_sample is greedy (MM-Vet's YAML: temperature 0.2, do_sample false)
    m.generate_until([request("q", {**kwargs, "do_sample": False}, 0)])
    assert len(m.vlm.sampled) == 1 and m.vlm.batches[-1][2] == 5


def test_defaults_and_bad_requests(adapter, fake_load):
    m = model(adapter)
    m.generate_until([request("q", {}, 1)])
    assert m.vlm.batches[-1][2] == adapter.DEFAULT_MAX_NEW_TOKENS
    with pytest.raises(ValueError, match="beam search"):
        m.generate_until([request("q", {"num_beams": 4}, 0)])
    with pytest.raises(ValueError, match="'until' must be"):
        m.generate_until([request("q", {"until": 3}, 0)])
    from lmms_eval.api.instance import Instance
    chat_style = Instance("generate_until", ("messages", {}, 0, "task", "test"), 0, {})
    with pytest.raises(ValueError, match=r"expected generate_until arguments \(context, gen_kwargs"):
        m.generate_until([chat_style])
    m.task_dict = {"task": {"test": [{"images": ["clip.mp4"]}]}}
    with pytest.raises(ValueError, match="expected PIL images"):
        m.generate_until([request("q", {}, 0)])
    with pytest.raises(NotImplementedError):
        m.loglikelihood([])
    with pytest.raises(NotImplementedError):
        m.generate_until_multi_round([])


def test_entry_point_in_pyproject(adapter):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("lmms-eval") for r in project["optional-dependencies"]["lmms-eval"])
    value = project["entry-points"]["lmms_eval.models"]["omnivision"]
    manifest = EntryPoint("omnivision", value, "lmms_eval.models").load()()
    assert manifest.model_id == "omnivision" and manifest.chat_class_path is None
    module, cls = manifest.simple_class_path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), cls) is adapter.OmniVisionLMMs


def test_without_lmms_eval_the_import_says_what_to_install(monkeypatch):
    _forget_lmms_eval(monkeypatch)
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # makes any import of it fail
    with pytest.raises(ImportError, match=r"pip install 'omnivision\[lmms-eval\]'"):
        importlib.import_module(ADAPTER)


@pytest.mark.skipif(not is_native(BUNDLED), reason="no bundled nano model")
def test_bundled_model_answers_as_the_runtime_does(adapter, tmp_path):
    """Through the adapter (batched, cut afterwards) the nano model gives the answers of its
    runtime answering one at a time and stopping at the stop strings."""
    generate_shapes_dataset(tmp_path, 2, 11, image_size=64)
    items = read_qa(tmp_path / "qa.jsonl")[:2]
    m = adapter.OmniVisionLMMs(device="cpu", dtype="float32", batch_size=3)
    m.task_dict = {"shapes": {"test": [{"image": Image.open(tmp_path / i.image)} for i in items]}}
    from lmms_eval.api.instance import Instance

    def req(n, prompt, until):
        return Instance("generate_until", (prompt, {"max_new_tokens": 16, "until": until},
                                           lambda doc: [doc["image"]], n, "shapes", "test"), n, {})
    # captions name objects and places ("A large purple square at the left, a ..."): both stops
    # occur, the earliest ends the answer
    requests = [req(n, i.question, ["\n\n"]) for n, i in enumerate(items)]
    requests.append(req(0, "Describe the image.", [",", " at "]))
    out = m.generate_until(requests)
    caption = m.vlm.chat(m.task_dict["shapes"]["test"][0]["image"], "Describe the image.",
                         max_new_tokens=16)
    assert caption.startswith(out[2]) and len(out[2]) < len(caption)  # a stop did bite
    for r, text in zip(requests, out):
        prompt, kwargs, visual, doc_id = r.args[:4]
        image = visual(m.task_dict["shapes"]["test"][doc_id])[0]
        assert text == m.vlm.chat(image, prompt, stop=kwargs["until"], max_new_tokens=16)


def test_real_lmms_eval(monkeypatch, fake_load):
    """lmms-eval's registry resolves our entry point, checks the class, builds it from a
    `--model_args` string, and the model answers lmms-eval's own Instance objects."""
    registry_v2 = pytest.importorskip("lmms_eval.models.registry_v2",
                                      reason="lmms-eval is not installed (optional)")
    from lmms_eval.api.instance import Instance

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    value = project["entry-points"]["lmms_eval.models"]["omnivision"]
    registry = registry_v2.ModelRegistryV2()
    registry.register_manifest(EntryPoint("omnivision", value, "lmms_eval.models").load()())
    cls = registry.get_model_class("omnivision")  # validates: an lmms subclass, is_simple
    m = cls.create_from_arg_string("pretrained=x,dtype=float32", {"batch_size": 2, "device": "cpu"})
    assert fake_load[-1] == ("x", {"device": "cpu", "dtype": "float32", "gguf_type": None, "mmproj": None})
    m.task_dict = DOCS
    requests = [Instance("generate_until", (f"q{n}", {"max_new_tokens": 4, "until": ["\n\n"]},
                                            lambda doc: doc["images"], n, "task", "test"),
                         n, {"task": "task", "doc_id": n, "repeats": 1}) for n in range(3)]
    assert m.generate_until(requests) == ["answer to q0", "answer to q1", "answer to q2"]
    assert [len(b[0]) for b in m.vlm.batches] == [2, 1]
