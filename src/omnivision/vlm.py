"""`OmniVision`: a loaded model with its tokenizer and preprocessing, answering about images.

The user-facing object that `omnivision.load` returns, and the one path to the model for every
front end (the CLI, evaluation, the server). It turns (image, prompt, history), or a conversation of
`Message`s, into prompt ids and pixels by the model's own config (template, preprocessing), runs
the generation loop and turns ids back into text (`TextStream`, with step hooks for callers that
constrain or inspect each step, and an interrupt check for cancellation); after `start_batching`,
answers asked from several threads at once are decoded in one batch. Image embeddings are kept by
pixel content (`embedding_cache`), so a second question about the same image skips the vision
tower. With `low_memory`, the two towers take
turns in resident memory (`weights.residency`): the language model's mapped pages are given back
before an image is encoded and the vision side's after, so the peak is the larger tower rather than
both (968M int4: a peak of 877 MB answering one image question, `answer_peak_rss_mb` in
docs/bench-cpu.json; the cost is reading pages back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from omnivision.embedding_cache import ImageEmbeddingCache
from omnivision.grouped_encoding import GroupedEncoder
from omnivision.generation.continuous import ContinuousBatcher
from omnivision.generation.generate import GenerationConfig, StepHooks, generate, generate_batch
from omnivision.generation.sampling import SamplingConfig
from omnivision.generation.text_stream import TextStream
from omnivision.model import OmniVisionModel
from omnivision.processing.image import ImageProcessor, ImageSource
from omnivision.processing.prompt import Message, build_inputs, strip_assistant_header
from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.residency import page_out


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    """Every generated id (an assistant header the model wrote included), without the stop token."""
    prompt_tokens: int
    stopped_by: str | None = None


@dataclass
class Turn:
    """One exchange of a conversation, for multi-turn chat."""

    prompt: str
    answer: str
    image: ImageSource | None = field(default=None, repr=False)


class OmniVision:
    def __init__(self, model: OmniVisionModel, tokenizer: Tokenizer, note: str = "",
                 cached_images: int = 16, low_memory: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.note = note
        """How the source was resolved (which files, which precision), for reporting."""
        self.image_processor = ImageProcessor(self.config.vision.image_size, self.config.processing)
        self.image_cache = ImageEmbeddingCache(cached_images)
        """Embeddings of the most recent images (0 turns caching off)."""
        self.low_memory = low_memory
        """Keep only one tower's memory-mapped weights resident at a time (see the module doc)."""
        self._encoder = GroupedEncoder(self._encode_cached)
        """One encoding at a time (the cache and paging are shared); images that threads bring
        meanwhile are encoded together next."""
        self.batcher: ContinuousBatcher | None = None
        """Set by `start_batching`: answers from every thread are decoded together."""

    def start_batching(self, max_batch: int, max_len: int | None = None, chunk: int = 256) -> ContinuousBatcher:
        """Decode the answers of concurrent callers (threads) in one batch of up to `max_batch`
        sequences, each joining and leaving between steps (`generation.continuous`); `max_len`
        positions per sequence (longer requests run alone), prompts prefilled `chunk` tokens at a time.
        Greedy answers stay the ones each gets alone."""
        self.stop_batching()
        self.batcher = ContinuousBatcher(self.model, max_batch, max_len, chunk)
        return self.batcher

    def stop_batching(self) -> None:
        """Back to one generation loop per caller; answers still being batched end with an error."""
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def prompt_ids(self, prompt: str, image: ImageSource | None,
                   history: Sequence[Turn] = (), template: str | None = None) -> tuple[list[int], list]:
        """Expanded prompt ids and the images they refer to, oldest first."""
        messages, images = [], []
        turns = (*history, Turn(prompt, "", image))
        for n, turn in enumerate(turns):
            messages.append(Message("user", turn.prompt, has_image=turn.image is not None))
            if turn.image is not None:
                images.append(turn.image)
            if n < len(turns) - 1:  # a past turn keeps its assistant reply, even an empty one
                messages.append(Message("assistant", turn.answer))
        return self._build(messages, template, None, literal=False), images

    def conversation_ids(self, messages: Sequence[Message], system_prompt: str | None = None) -> list[int]:
        """Expanded prompt ids of a conversation from outside (an OpenAI-style request), in the
        model's template. The text of every turn is kept literal: special-token text in it is
        tokenized as plain text, so a message cannot forge turns. `system_prompt` None: the model's."""
        return self._build(messages, None, system_prompt, literal=True)

    def _build(self, messages: Sequence[Message], template: str | None, system_prompt: str | None,
               literal: bool) -> list[int]:
        """The one place prompts are made: the model's template and system prompt unless given."""
        proc = self.config.processing
        system = proc.system_prompt if system_prompt is None else system_prompt
        return build_inputs(self.tokenizer, messages, template or proc.template, system,
                            self.config.num_image_tokens, escape_content=literal)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageSource], max_pixels: int | None = None) -> torch.Tensor:
        """Projected embeddings [N, K, D] of the images, from the cache where possible. Safe to call
        from several threads: images that arrive while another thread's are encoded go through the
        tower together next (`GroupedEncoder`). `max_pixels`: the largest image accepted (default:
        the processor's)."""
        return self._encoder(self.image_processor(images, max_pixels).to(self.model.device))

    def _encode_cached(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_cache.encode(pixels, self._encode_uncached, self._image_weights_token())

    def _encode_uncached(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.low_memory:
            return self.model.encode_images(pixels)
        page_out(self.model.language)
        embeds = self.model.encode_images(pixels)  # [N, K, D]
        page_out(self.model.vision, self.model.projector)
        return embeds

    def _image_weights_token(self) -> tuple:
        """Identity and in-place version of every tensor the image embeddings depend on (~1000 tensors,
        well under a millisecond), so cached embeddings never outlive the weights that made them."""
        tensors = [*self.model.vision.parameters(), *self.model.vision.buffers(),
                   *self.model.projector.parameters(), *self.model.projector.buffers()]
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def _generation_config(self, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                           repetition_penalty: float, seed: int | None) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=max_new_tokens,
                                sampling=SamplingConfig(temperature, top_k, top_p, repetition_penalty),
                                seed=seed, stop_token_ids=self.config.stop_token_ids)

    def stream_prompt(self, prompt_ids: Sequence[int], image_embeds: torch.Tensor | None = None, *,
                      stop: Sequence[str] = (), hooks: StepHooks | None = None,
                      interrupt: Callable[[], str | None] | None = None, max_new_tokens: int = 256,
                      temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                      repetition_penalty: float = 1.0, seed: int | None = None) -> TextStream:
        """The answer to prepared prompt ids (`prompt_ids`, `conversation_ids`) and image embeddings
        (`encode_images`) as a `TextStream`: iterate it for text pieces; then it holds the token ids,
        the stop string met and the finish reason. `hooks` see (and may constrain) every step's
        logits; `interrupt` is asked after every token and a reason it returns ends the answer."""
        gen = self._generation_config(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        batcher = self.batcher
        if batcher is not None and len(prompt_ids) + max_new_tokens <= batcher.max_len:
            tokens = batcher.submit(prompt_ids, image_embeds, gen, hooks)
        else:
            tokens = generate(self.model, prompt_ids, image_embeds, gen, hooks)
        return TextStream(tokens, self.tokenizer, stop, limit=max_new_tokens, interrupt=interrupt)

    def _stream(self, image, prompt, history, template, stop, gen_kwargs) -> tuple[TextStream, int]:
        self._generation_config(**gen_kwargs)  # settings checked before any image work
        ids, images = self.prompt_ids(prompt, image, history, template)
        embeds = self.encode_images(images) if images else None
        return self.stream_prompt(ids, embeds, stop=stop, **gen_kwargs), len(ids)

    def stream(self, image: ImageSource | None, prompt: str, *, history: Sequence[Turn] = (),
               template: str | None = None, stop: Sequence[str] = (), max_new_tokens: int = 256,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed: int | None = None) -> Iterator[str]:
        """Yield the answer as it is generated (greedy by default, as the official runtime)."""
        text, _ = self._stream(image, prompt, history, template, stop,
                               dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, repetition_penalty=repetition_penalty, seed=seed))
        yield from text

    def answer(self, image: ImageSource | None, prompt: str, *, history: Sequence[Turn] = (),
               template: str | None = None, stop: Sequence[str] = (), max_new_tokens: int = 256,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed: int | None = None) -> Answer:
        """The whole answer with its token ids."""
        text, n_prompt = self._stream(image, prompt, history, template, stop,
                                      dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                           top_k=top_k, top_p=top_p,
                                           repetition_penalty=repetition_penalty, seed=seed))
        answer = "".join(text)
        return Answer(answer, text.token_ids, n_prompt, text.stopped_by)

    def chat(self, image: ImageSource | None, prompt: str, **kwargs) -> str:
        """The answer text; keyword arguments as `answer`."""
        return self.answer(image, prompt, **kwargs).text

    def answer_batch(self, images: Sequence[ImageSource | None], prompts: Sequence[str], *,
                     histories: Sequence[Sequence[Turn]] | None = None, max_new_tokens: int = 256,
                     template: str | None = None) -> list[str]:
        """Greedy answers to several questions at once (the same answers as one by one), each a
        single turn, or the next turn after its `histories` entry."""
        histories = [()] * len(prompts) if histories is None else histories
        for name, given in (("images", images), ("histories", histories)):
            if len(given) != len(prompts):
                raise ValueError(f"{len(given)} {name} for {len(prompts)} prompts")
        gen = self._generation_config(max_new_tokens, 0.0, 0, 1.0, 1.0, None)
        built = [self.prompt_ids(p, im, h, template) for im, p, h in zip(images, prompts, histories)]
        batch = [ids for ids, _ in built]
        present = [im for _, refers_to in built for im in refers_to]  # in the order the prompts hold them
        embeds = self.encode_images(present) if present else None
        out = generate_batch(self.model, batch, embeds, gen)
        return [strip_assistant_header(self.tokenizer.decode(ids)) for ids in out]
