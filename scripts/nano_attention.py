"""Which image token a nano model's answer reads: attention of the first answer token per layer and head.

    python scripts/nano_attention.py MODEL DATA [--scenes N] [--threads T] [--at question]

MODEL is a nano model (or any stage of the nano recipe), DATA a folder written by `omnivision data
shapes` at the model's image size (the recipe's `eval-data`). The nano model has one image token per
cell of the scenes' 3x3 grid, so each colour question ("What color is the object at the top left?")
and each position question ("Where is the red circle?") about a scene of two or more objects names
one image token that holds the answer: the asked object's. The model answers greedily; then, at the
position that predicts the answer's first word, each head's attention over the 9 image tokens is
split into the asked object's token, the other objects' tokens and the empty cells' tokens, as
shares of the attention on the image, averaged over the right and over the wrong answers, with how
often the asked token gets the most of it. With `--at question` the position is instead the question's
last word that names the object (the place of a colour question, "left" or "center"; the shape of
a position question, "circle"): the first position where the decoder can know which token it wants.

`scripts/nano_answers.py` shows that wrong answers name another object's attribute; this shows
where in the decoder the lookup happens and whether, on a wrong answer, the heads that look up
the asked token attend to another object's instead (the lookup fails) or to the right token (the
reading after it fails).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from nano_answers import asked_cell, model_and_scenes
from omnivision.data.formats import read_qa
from omnivision.data.shape_scenes import POSITIONS
from omnivision.model.qwen2 import apply_rotary
from omnivision.processing.prompt import strip_assistant_header

AT = ("answer", "question")  # the positions whose attention `--at` chooses


def main() -> None:
    args, vlm, every = model_and_scenes(__doc__, extra=[("--at", {"choices": AT, "default": "answer",
                                                               "help": "the position whose attention is split"})])
    scenes = {s["image"]: s for s in every[:args.scenes or None] if s["kind"] == "shapes"}
    items = [q for q in read_qa(args.data / "qa.jsonl") if q.image in scenes and q.qtype in ("color", "position")
             and len(scenes[q.image]["objects"]) > 1]
    # sums[(kind, right?)][layer, head] = [asked, other objects, empty cells, asked gets most] over questions
    sums: dict[tuple[str, bool], torch.Tensor] = defaultdict(lambda: 0)
    counts: dict[tuple[str, bool], int] = defaultdict(int)
    for q in items:
        objects = scenes[q.image]["objects"]
        asked = asked_cell(q.qtype, q.question, objects)
        occupied = {POSITIONS.index(o["position"]) for o in objects}
        probs, said = _image_attention(vlm, args.data / q.image, q.question, args.at)  # [L, H, 9]
        right = said.rstrip(".").lower() == q.answer.lower()
        probs = probs / probs.sum(-1, keepdim=True)  # shares of the attention on the image
        others = sorted(occupied - {asked})
        empty = sorted(set(range(9)) - occupied)
        row = torch.stack([probs[..., asked], probs[..., others].sum(-1), probs[..., empty].sum(-1),
                           (probs.argmax(-1) == asked).float()], -1)  # [L, H, 4]
        sums[q.qtype, right] = sums[q.qtype, right] + row
        counts[q.qtype, right] += 1
    for (kind, right), total in sorted(sums.items()):
        n = counts[kind, right]
        mean = total / n
        print(f"\n{kind} questions, {'right' if right else 'wrong'} answers ({n}), at the {args.at}: per head, "
              "the attention on "
              "the image that goes to the asked object's token / other objects' / empty cells'; "
              "share of questions where the asked token gets the most")
        for layer in range(mean.shape[0]):
            print(f"  layer {layer}: " + "  ".join(
                f"h{h} {a:.2f}/{o:.2f}/{e:.2f} {m:4.0%}" for h, (a, o, e, m) in enumerate(mean[layer].tolist())))


@torch.inference_mode()
def _image_attention(vlm, image: Path, question: str, at: str) -> tuple[torch.Tensor, str]:
    """The greedy answer, and the attention [layers, heads, 9] on the image tokens of the position
    `at`: the one that predicts the answer's first word, or the question's last word."""
    answer = vlm.answer(image, question, max_new_tokens=16)
    ids, images = vlm.prompt_ids(question, image)
    if at == "question":  # the first token by which the prompt holds the question without its "?"
        end = next(j for j in range(len(ids)) if question[:-1] in vlm.tokenizer.decode(ids[:j + 1]))
        input_ids = torch.tensor([ids[:end + 1]])  # [1, T]
    else:
        generated = list(answer.token_ids)
        first = next((j for j in range(len(generated))
                      if strip_assistant_header(vlm.tokenizer.decode(generated[:j + 1]))), 0)
        input_ids = torch.tensor([ids + generated[:first]])  # [1, T]
    model = vlm.model
    slots = (input_ids[0] == model.config.image_token_id).nonzero().flatten()  # [9]
    captured: list[torch.Tensor] = []

    def keep(attn, args, kwargs):
        x, rope = args[0], args[1]  # [1, T, D], the rotary cos / sin
        b, t, _ = x.shape
        q = attn.q_proj(x[:, -1:]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # [1, H, 1, hd]
        k = attn.k_proj(x).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)  # [1, Hkv, T, hd]
        cos, sin = rope  # [1, 1, T, hd]
        q, k = apply_rotary(q, cos[..., -1:, :], sin[..., -1:, :]), apply_rotary(k, cos, sin)
        k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)  # [1, H, T, hd]
        scores = (q @ k.transpose(-1, -2))[0, :, 0] * attn.head_dim ** -0.5  # [H, T]; the last position sees all
        captured.append(scores.softmax(-1)[:, slots])  # [H, 9]

    hooks = [layer.self_attn.register_forward_pre_hook(keep, with_kwargs=True)
             for layer in model.language.model.layers]
    try:
        model(input_ids, image_embeds=vlm.encode_images(images))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(captured), answer.text


if __name__ == "__main__":
    main()
