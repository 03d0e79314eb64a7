"""The named models: architecture, parameter counts, heads, determinism, and every error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ewc.experiment.models import CNN, MLP, ModelName, MultiHead, build_model


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_784_400_400_10_has_478410_parameters():
    model = build_model("mlp", num_outputs=10)
    # (784·400 + 400) + (400·400 + 400) + (400·10 + 10)
    assert count(model) == 478_410
    assert isinstance(model, MLP)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 400), (400, 10)]


def test_cnn_is_exactly_the_specified_network():
    model = build_model("cnn", num_outputs=10)
    # conv 1→32: 32·9 + 32 = 320; conv 32→64: 64·32·9 + 64 = 18,496;
    # Linear 1600→128: 204,928; Linear 128→10: 1,290.
    assert count(model) == 320 + 18_496 + 204_928 + 1_290 == 225_034
    layers = [type(m) for m in model.features] + [type(model.output)]
    assert layers == [
        nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d,
        nn.Flatten, nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    conv1, conv2 = model.features[0], model.features[3]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size) == (1, 32, (3, 3))
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size) == (32, 64, (3, 3))
    assert model.features[7].in_features == 1600
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_multi_head_models_stack_one_linear_head_per_task(name):
    single = build_model(name, num_outputs=2, seed=0)
    multi = build_model(name, num_outputs=2, heads=5, seed=0)
    assert isinstance(multi.output, MultiHead)
    assert count(multi) - count(single) == 4 * count(single.output)
    x = torch.rand(3, 1, 28, 28)
    out = multi(x)
    assert out.shape == (3, 5, 2)
    features = multi.features(x)
    for t in range(5):
        assert torch.equal(out[:, t], multi.output[t](features))
    names = {n for n, _ in multi.named_parameters()}
    assert {"output.0.weight", "output.4.bias"} <= names


def test_models_are_deterministic_given_the_seed():
    torch.manual_seed(3)
    a = build_model("mlp", num_outputs=10, hidden=(32,))
    torch.manual_seed(3)
    b = build_model("mlp", num_outputs=10, hidden=(32,))
    c = build_model("cnn", num_outputs=4, heads=2, seed=11)
    d = build_model("cnn", num_outputs=4, heads=2, seed=11)
    for x, y in ((a, b), (c, d)):
        for p, q in zip(x.state_dict().values(), y.state_dict().values(), strict=True):
            assert torch.equal(p, q)
    assert not torch.equal(c.output[0].weight, c.output[1].weight)


def test_seed_leaves_the_global_generator_alone():
    before = torch.random.get_rng_state()
    build_model("mlp", num_outputs=10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_shapes_and_widths_follow_the_arguments():
    linear = build_model("mlp", num_outputs=3, hidden=(), input_shape=(2, 4, 4))
    assert [type(m) for m in linear.modules()][1:] == [nn.Sequential, nn.Flatten, nn.Linear]
    assert linear(torch.rand(6, 2, 4, 4)).shape == (6, 3)
    deep = MLP(in_features=10, hidden=[7, 6, 5], num_outputs=2)
    assert deep(torch.rand(4, 10)).shape == (4, 2)
    assert build_model("cnn", num_outputs=2, input_shape=(3, 10, 12))(
        torch.rand(1, 3, 10, 12)
    ).shape == (1, 2)
    assert CNN(in_channels=3, image_size=(32, 32)).features[7].in_features == 64 * 6 * 6
    assert build_model(ModelName.CNN, num_outputs=2) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet"}, "unknown model 'resnet'; valid names are 'mlp', 'cnn'"),
        ({"num_outputs": 0}, "num_outputs must be a positive integer; got 0"),
        ({"num_outputs": 2.0}, "num_outputs must be a positive integer; got 2.0"),
        ({"heads": 0}, "heads must be a positive integer; got 0"),
        ({"heads": True}, "heads must be a positive integer; got True"),
        ({"hidden": (400, 0)}, r"hidden widths must be positive integers; got 0 in \(400, 0\)"),
        ({"hidden": 400}, "hidden must be a sequence of layer widths; got 400"),
        ({"input_shape": (1, 0, 28)}, r"input_shape must be a tuple of positive integers"),
        ({"input_shape": ()}, r"input_shape must be a tuple of positive integers; got \(\)"),
        ({"name": "cnn", "input_shape": (784,)}, r"cnn needs input_shape \(channels, height"),
        ({"name": "cnn", "input_shape": (1, 9, 28)}, r"at least 10×10 pixels.*\(9, 28\)"),
        ({"seed": -1}, "seed must be a non-negative integer or None; got -1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    kwargs = {"name": "mlp", "num_outputs": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model(kwargs.pop("name"), **kwargs)


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="in_features must be a positive integer; got 0"):
        MLP(in_features=0)
    with pytest.raises(ValueError, match="in_channels must be a positive integer; got 0"):
        CNN(in_channels=0)
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\); got 28"):
        CNN(image_size=28)
