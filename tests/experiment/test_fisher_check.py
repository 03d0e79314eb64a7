"""`ewc fisher-check`: the identities on the embedded MNIST, through the CLI."""

from __future__ import annotations

import torch

from ewc.cli import main
from ewc.experiment.fisher_check import fisher_check


def test_the_identities_hold_under_the_model_and_not_under_the_data():
    result = fisher_check(train_samples=200, epochs=1, samples=20, hidden=4)
    for name, own in result.identities.model.items():
        scale = float(own.second_moment.abs().max())
        assert float(own.mean.abs().max()) <= 1e-10 * scale, name
        torch.testing.assert_close(own.second_moment, own.negative_hessian, rtol=1e-9, atol=0)
        data = result.identities.empirical[name]
        assert float(data.mean.abs().max()) > 1e-6 * scale, name  # the data's mean score is not 0


def test_the_cli_prints_both_tables(capsys):
    args = ["--train-samples", "100", "--epochs", "1", "--samples", "10", "--hidden", "3"]
    assert main(["fisher-check", *args]) == 0
    out = capsys.readouterr().out
    assert "784-3-10 MLP" in out
    assert "the empirical Fisher" in out


def test_bad_sizes_are_one_line(capsys):
    assert main(["fisher-check", "--samples", "0"]) == 2
    assert "samples must be in [1, train_samples=4000]; got 0" in capsys.readouterr().err


def test_the_plot_is_a_png(tmp_path, capsys):
    target = tmp_path / "identities.png"
    args = ["--train-samples", "60", "--epochs", "1", "--samples", "8", "--hidden", "2"]
    assert main(["fisher-check", *args, "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure: {target}" in capsys.readouterr().out
