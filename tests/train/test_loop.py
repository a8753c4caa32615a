"""The shared loop on the toy task and on the tiny OmniVision model: learning, freezing, weight decay,
accumulation, clipping, bf16, gradient checkpointing, the data order and the guard rails."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from omnivision.train.config import TrainConfig
from omnivision.train.loop import to_device, train


def _run(toy, tmp_path, name, **overrides):
    model = toy.make_model()
    cfg = TrainConfig(out_dir=str(tmp_path / name), **overrides)
    result = train(model, toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg,
                   trainable=toy.not_embed)
    return model, result


def test_loss_falls_and_frozen_parameters_stay_bit_identical(toy, tmp_path, fp32_cfg):
    before = {k: v.clone() for k, v in toy.make_model().state_dict().items()}
    model, result = _run(toy, tmp_path, "run", steps=40, batch_size=8, lr=3e-2, log_every=5, **fp32_cfg)
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    assert set(records[0]) == {"step", "loss", "lr", "grad_norm", "samples_per_s", "mae"}
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert result.final_loss == records[-1]["loss"] and result.steps == 40
    assert result.checkpoint_dir.name == "step_00000040"
    assert torch.equal(model.embed.weight, before["embed.weight"])
    assert torch.equal(model.embed.bias, before["embed.bias"])
    assert not model.embed.weight.requires_grad and model.head.weight.requires_grad
    assert not torch.equal(model.head.weight, before["head.weight"])


def test_weight_decay_only_on_matrices(toy, tmp_path, fp32_cfg):
    """With a zero loss gradient AdamW's update is 0, so only decoupled decay moves a parameter:
    matrices shrink by prod_t(1 - lr_t * wd), vectors (biases) do not move at all."""
    class ZeroGrad:
        def loss(self, model, batch):
            return 0.0 * model(batch["x"]).sum(), {}

    model = toy.make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(out_dir=str(tmp_path / "wd"), steps=5, lr=0.1, weight_decay=0.5,
                      min_lr_ratio=1.0, **fp32_cfg)
    train(model, ZeroGrad(), toy.make_dataset(), toy.collate, cfg, trainable=toy.not_embed)
    assert torch.equal(model.head.bias, before["head.bias"])
    torch.testing.assert_close(model.head.weight, before["head.weight"] * (1 - 0.1 * 0.5) ** 5)
    assert torch.equal(model.embed.weight, before["embed.weight"])  # frozen: no decay either


def test_lr_scales_give_each_component_its_own_rate(toy, tmp_path, fp32_cfg):
    """A projector that must learn fast beside a decoder that must learn slowly (nano stage 2) needs
    a rate per component. Adam's first step moves every parameter with a gradient by its group's
    rate (m / sqrt(v) = +-1); decoupled decay shrinks matrices by (1 - rate * wd) per step."""
    model = toy.make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(out_dir=str(tmp_path / "scales"), steps=1, lr=1e-2, lr_scales={"head": 0.25},
                      min_lr_ratio=1.0, **fp32_cfg)
    result = train(model, toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg, trainable=toy.not_embed)
    head_step = (model.head.bias - before["head.bias"]).abs()
    layer_step = (model.language.model.layers[0].linear.bias - before["language.model.layers.0.linear.bias"]).abs()
    torch.testing.assert_close(head_step, torch.full_like(head_step, 0.25e-2), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(layer_step, torch.full_like(layer_step, 1e-2), rtol=1e-3, atol=1e-6)
    assert json.loads(result.metrics_path.read_text().splitlines()[-1])["lr"] == 1e-2  # the base rate

    class ZeroGrad:
        def loss(self, model, batch):
            return 0.0 * model(batch["x"]).sum(), {}

    model = toy.make_model()
    cfg = TrainConfig(out_dir=str(tmp_path / "decay"), steps=3, lr=0.1, weight_decay=0.5, min_lr_ratio=1.0,
                      lr_scales={"language": 0.5}, **fp32_cfg)
    train(model, ZeroGrad(), toy.make_dataset(), toy.collate, cfg, trainable=toy.not_embed)
    torch.testing.assert_close(model.head.weight, before["head.weight"] * (1 - 0.1 * 0.5) ** 3)
    torch.testing.assert_close(model.language.model.layers[1].linear.weight,
                               before["language.model.layers.1.linear.weight"] * (1 - 0.05 * 0.5) ** 3)


def test_lr_scales_refuse_unknown_components_and_non_positive_values(toy, tmp_path, fp32_cfg):
    with pytest.raises(ValueError, match="lr_scales"):
        TrainConfig(out_dir=str(tmp_path / "a"), lr_scales={"language": 0.0})
    cfg = TrainConfig(out_dir=str(tmp_path / "b"), steps=1, lr_scales={"embed": 2.0}, **fp32_cfg)  # frozen
    with pytest.raises(ValueError, match="embed"):
        train(toy.make_model(), toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg, trainable=toy.not_embed)


def test_grad_accumulation_matches_the_large_batch(toy, tmp_path, fp32_cfg):
    common = dict(steps=8, lr=1e-2, weight_decay=0.1, warmup_steps=2, **fp32_cfg)
    big, _ = _run(toy, tmp_path, "big", batch_size=8, grad_accum=1, **common)
    acc, _ = _run(toy, tmp_path, "acc", batch_size=4, grad_accum=2, **common)
    for (name, a), b in zip(big.state_dict().items(), acc.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_clipping_bounds_the_global_gradient_norm(toy, tmp_path, fp32_cfg):
    norms = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        _, result = _run(toy, tmp_path, "clip", steps=4, max_grad_norm=0.05, log_every=1, **fp32_cfg)
        clipped = norms[:]
        norms.clear()
        _, unclipped_result = _run(toy, tmp_path, "free", steps=4, max_grad_norm=0.0, log_every=1,
                                   **fp32_cfg)
    finally:
        handle.remove()
    logged = [json.loads(line)["grad_norm"] for line in result.metrics_path.read_text().splitlines()]
    assert all(n > 0.05 for n in logged)            # the logged norm is the one before clipping
    assert max(clipped) == pytest.approx(0.05, rel=1e-4)
    assert norms[0] == pytest.approx(logged[0], rel=1e-5)  # off: the optimizer sees the raw gradient


def test_bf16_autocast_and_gradient_checkpointing_switch(toy, tmp_path):
    model = toy.make_model()
    cfg = TrainConfig(out_dir=str(tmp_path / "bf16"), steps=3, precision="bf16", device="cpu",
                      grad_checkpointing=True, progress=False)
    result = train(model, toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg)
    assert model.checkpointing is True
    assert torch.isfinite(torch.tensor(result.final_loss))
    assert model.head.weight.dtype == torch.float32  # autocast, not a cast of the weights


def test_to_device_walks_containers():
    from dataclasses import dataclass

    @dataclass
    class B:
        x: torch.Tensor
        n: int

    out = to_device({"a": [torch.ones(1), (torch.zeros(1), "s")], "b": B(torch.ones(2), 3)},
                    torch.device("cpu"))
    assert isinstance(out["b"], B) and out["b"].n == 3 and out["a"][1][1] == "s"


def test_guard_rails(toy, tmp_path, fp32_cfg):
    class Vector:
        def loss(self, model, batch):
            return (model(batch["x"]) - batch["y"]) ** 2, {}

    cfg = TrainConfig(out_dir=str(tmp_path / "g"), steps=2, **fp32_cfg)
    with pytest.raises(ValueError, match="scalar"):
        train(toy.make_model(), Vector(), toy.make_dataset(), toy.collate, cfg)
    with pytest.raises(ValueError, match="nothing to train"):
        train(toy.make_model(), toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg,
              trainable=lambda m: [])
    train(toy.make_model(), toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg)
    with pytest.raises(FileExistsError, match="resume"):
        train(toy.make_model(), toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg)


def test_tiny_omnivision_projector_and_language_learn_vision_frozen(tiny_model, tmp_path):
    """Image + caption tokens on the tiny preset: next-token loss falls; the vision tower is frozen."""
    model = tiny_model.train()
    c = model.config
    g = torch.Generator().manual_seed(0)
    data = [(torch.cat([torch.full((c.num_image_tokens,), c.image_token_id),
                        torch.randint(0, 200, (12,), generator=g)]),
             torch.randn(3, c.vision.image_size, c.vision.image_size, generator=g)) for _ in range(4)]

    def collate(items):
        return torch.stack([i for i, _ in items]), torch.stack([p for _, p in items])

    class Caption:
        def loss(self, m, batch):
            ids, pixels = batch
            logits = m(ids, pixel_values=pixels)  # [B, T, V]
            return F.cross_entropy(logits[:, c.num_image_tokens:-1].flatten(0, 1),
                                   ids[:, c.num_image_tokens + 1:].flatten()), {}

    vision = {k: v.clone() for k, v in model.vision.state_dict().items()}
    cfg = TrainConfig(out_dir=str(tmp_path / "tiny"), steps=15, batch_size=4, lr=3e-3, log_every=1,
                      precision="fp32", device="cpu", progress=False)
    result = train(model, Caption(), data, collate, cfg,
                   trainable=lambda m: [*m.projector.named_parameters(), *m.language.named_parameters()])
    losses = [json.loads(line)["loss"] for line in result.metrics_path.read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(v, vision[k]) for k, v in model.vision.state_dict().items())
    assert (result.metrics_path.parent / "curves.png").is_file()


def test_gradient_checkpointing_on_the_tiny_model_changes_nothing(tiny_config, tmp_path):
    """Recomputing activations in the backward pass gives the same update as keeping them."""
    from omnivision.model import OmniVisionModel, init_weights

    c = tiny_config
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 200, (10,), generator=g) for _ in range(4)]

    class Text:
        def loss(self, m, ids):
            logits = m(ids)  # [B, T, V]
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()), {}

    models = []
    for on in (False, True):
        torch.manual_seed(0)
        model = OmniVisionModel(c)
        init_weights(model, std=0.1)
        cfg = TrainConfig(out_dir=str(tmp_path / str(on)), steps=3, batch_size=2, lr=1e-2,
                          grad_checkpointing=on, precision="fp32", device="cpu", progress=False)
        train(model, Text(), data, torch.stack, cfg,
              trainable=lambda m: list(m.language.named_parameters()))
        models.append(model)
    assert models[1].language.gradient_checkpointing and not models[0].language.gradient_checkpointing
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


@pytest.mark.long
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_decoder_trains_as_the_eager_one_and_is_eager_again_after(tiny_config, tmp_path, checkpointing):
    """`compile`: the steps run the compiled decoder (batches of changing length on one dynamic
    graph; with gradient checkpointing too), the update is the eager one up to float rounding, and
    the model leaves `train` eager."""
    from omnivision.model import OmniVisionModel, init_weights
    from omnivision.model.omnivision import _compile_problem

    if _compile_problem(torch.device("cpu")):
        pytest.skip(f"no compiled decoder here: {_compile_problem(torch.device('cpu'))}")

    c = tiny_config
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 200, (n,), generator=g) for n in (6, 9, 11, 7, 13, 8, 10, 12)]
    compiled_in_steps = []

    class Text:
        def loss(self, m, ids):
            compiled_in_steps.append(m.is_compiled)
            logits = m(ids)  # [B, T, V]
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()), {}

    def collate(items):  # cut to the shortest: every batch has its own length
        n = min(len(i) for i in items)
        return torch.stack([i[:n] for i in items])

    models, losses = [], []
    for on in (False, True):
        torch.manual_seed(0)
        model = OmniVisionModel(c)
        init_weights(model, std=0.1)
        cfg = TrainConfig(out_dir=str(tmp_path / str(on)), steps=6, batch_size=2, lr=1e-2, log_every=1,
                          compile=on, grad_checkpointing=on and checkpointing, precision="fp32", device="cpu",
                          progress=False)
        result = train(model, Text(), data, collate, cfg, trainable=lambda m: list(m.language.named_parameters()))
        models.append(model)
        losses.append([json.loads(line)["loss"] for line in result.metrics_path.read_text().splitlines()])
    assert compiled_in_steps == [False] * 6 + [True] * 6
    assert not models[1].is_compiled  # eager again
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    # outputs, not weights: the keys' biases get gradients of rounding noise only (softmax ignores a
    # constant per query), which AdamW turns into full-size steps of either sign
    probe = torch.randint(0, 200, (2, 9), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(models[1](probe), models[0](probe), rtol=1e-4, atol=1e-4)


def test_group_by_length_batches_similar_samples_and_needs_their_lengths(toy, tmp_path, fp32_cfg):
    data = toy.make_dataset(n=48)
    index = {id(item): i for i, item in enumerate(data)}
    lengths = torch.randperm(48, generator=torch.Generator().manual_seed(2)).tolist()
    spreads = []  # per batch: longest - shortest

    def collate(items):
        batch = [lengths[index[id(i)]] for i in items]
        spreads.append(max(batch) - min(batch))
        return toy.collate(items)

    def run(name, group, **kw):
        spreads.clear()
        cfg = TrainConfig(out_dir=str(tmp_path / name), steps=12, batch_size=4, group_by_length=group,
                          **fp32_cfg)
        train(toy.make_model(), toy.RegressionTask(), data, collate, cfg, **kw)
        return sum(spreads) / len(spreads)

    with pytest.raises(ValueError, match="group_by_length needs the samples' lengths"):
        run("missing", 3)
    assert run("grouped", 3, lengths=lengths) < 0.5 * run("plain", 0, lengths=lengths)
    with pytest.raises(ValueError, match="group_by_length: 3 -> None"):  # another data order
        run("grouped", 0, lengths=lengths, resume=True)
