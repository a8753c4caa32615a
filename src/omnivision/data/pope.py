"""Yes/no object probes sampled the way POPE samples them, for shapes scenes.

An "object" is a colour and a shape ("red circle"), from the 24 of `all_object_names()`. For each
scene and each strategy, `k` positives are objects present in the scene and `k` negatives are
objects absent from it, so yes and no are balanced per strategy (`k` is at most the number of
objects present). Negatives per strategy:

- random: drawn uniformly from the absent objects;
- popular: the absent objects that occur in the most scenes of the dataset (ties: vocabulary order);
- adversarial: drawn uniformly from the absent objects that share the colour or the shape of a
  present object. POPE ranks by co-occurrence with present objects; in this world co-occurrence is
  uniform, so sharing an attribute is what makes a negative confusable.

The positives are the same for the three strategies, as in POPE.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from omnivision.data.questions import Question, probe_text
from omnivision.data.records import POPE_STRATEGIES
from omnivision.data.shape_scenes import ShapeScene, all_object_names

_VOCAB = all_object_names()


def object_frequencies(scenes: Iterable[ShapeScene]) -> Counter[str]:
    """How many scenes each object occurs in (every vocabulary object is a key, maybe with 0)."""
    counts = Counter({name: 0 for name in _VOCAB})
    for scene in scenes:
        counts.update({o.name for o in scene.objects})
    return counts


def _shares_attribute(name: str, present: Iterable[str]) -> bool:
    color, shape = name.split(" ")
    return any(p.split(" ")[0] == color or p.split(" ")[1] == shape for p in present)


def negative_candidates(present: Iterable[str], strategy: str,
                        frequencies: Counter[str]) -> list[str]:
    """The absent objects a strategy draws from; for "popular", most frequent first."""
    present = set(present)
    absent = [n for n in _VOCAB if n not in present]
    if strategy == "random":
        return absent
    if strategy == "popular":
        return sorted(absent, key=lambda n: -frequencies[n])  # stable: ties keep vocabulary order
    if strategy == "adversarial":
        return [n for n in absent if _shares_attribute(n, present)]
    raise ValueError(f"unknown POPE strategy {strategy!r}; choose from {POPE_STRATEGIES}")


def sample_negatives(present: Iterable[str], strategy: str, k: int, rng: random.Random,
                     frequencies: Counter[str]) -> list[str]:
    """`k` absent objects chosen by `strategy` (fewer if there are not enough)."""
    candidates = negative_candidates(present, strategy, frequencies)
    if strategy == "popular":
        return candidates[:k]
    return rng.sample(candidates, min(k, len(candidates)))


def probe(name: str, answer: str, strategy: str) -> Question:
    """The yes/no question about one object."""
    return Question(probe_text(name), answer, "pope",
                    {"strategy": strategy, "object": name})


def pope_probes(scene: ShapeScene, rng: random.Random, frequencies: Counter[str],
                k: int = 3) -> list[Question]:
    """Balanced probes for every strategy: per strategy `k'` yes then `k'` no, `k' <= k`."""
    present = [o.name for o in scene.objects]
    k = min([k, len(present)] + [len(negative_candidates(present, s, frequencies))
                                 for s in POPE_STRATEGIES])
    positives = rng.sample(present, k)
    out = []
    for strategy in POPE_STRATEGIES:
        out += [probe(name, "yes", strategy) for name in positives]
        out += [probe(name, "no", strategy)
                for name in sample_negatives(present, strategy, k, rng, frequencies)]
    return out


def training_probe(scene: ShapeScene, rng: random.Random, frequencies: Counter[str]) -> Question:
    """One probe for training: yes or no with equal chance, negatives from a random strategy."""
    strategy = rng.choice(POPE_STRATEGIES)
    present = [o.name for o in scene.objects]
    if rng.random() < 0.5:
        return probe(rng.choice(present), "yes", strategy)
    return probe(sample_negatives(present, strategy, 1, rng, frequencies)[0], "no", strategy)
