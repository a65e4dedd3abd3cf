"""Every variant trains on ECG- and MNIST-shaped windows; regularisers compute what they claim."""

from __future__ import annotations

import pytest
import torch

from training.errors import TrainingError
from training.models import (
    MODELS,
    ContractiveAutoencoder,
    SparseKLAutoencoder,
    SparseL1Autoencoder,
    VariationalAutoencoder,
    build_model,
    kl_bernoulli,
    variant_options,
)

DENSE = [v for v in MODELS if v != "lstm"]
# Small models: one thread, as the CLI uses (a second one only adds contention here).
torch.set_num_threads(1)


def _steps(model: torch.nn.Module, x: torch.Tensor, n: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(n):
        total, rec = model.loss(x)  # type: ignore[operator]
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(rec.item())
    return losses


@pytest.mark.parametrize("variant", list(MODELS))
def test_every_variant_trains_a_few_steps_on_ecg_windows(variant: str) -> None:
    torch.manual_seed(0)
    t = torch.linspace(0, 6.28, 140)
    x = torch.sin(t)[None, :] * torch.linspace(0.5, 1.5, 16)[:, None] + 0.05 * torch.randn(16, 140)
    model = build_model(variant, 140, 8 if variant == "lstm" else 4)
    steps = 6 if variant == "lstm" else 30
    losses = _steps(model, x, steps)
    assert losses[-1] < losses[0]
    model.eval()
    recon = model(x)
    assert recon.shape == (16, 140)
    score, recon2 = model.score(x)
    assert score.shape == (16,)
    torch.testing.assert_close(recon, recon2)
    torch.testing.assert_close(score, (model.prepare(x) - recon).abs().sum(dim=1))


@pytest.mark.parametrize("variant", DENSE)
def test_dense_family_trains_on_mnist_shaped_windows(variant: str) -> None:
    torch.manual_seed(0)
    x = (torch.rand(8, 784) > 0.7).float()
    model = build_model(variant, 784, 8, zscore=False, output="sigmoid")
    losses = _steps(model, x, 15, lr=3e-3)
    assert losses[-1] < losses[0]
    model.eval()
    out = model(x).detach()
    assert out.shape == (8, 784) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_forward_is_deterministic_in_eval_for_denoising_and_vae() -> None:
    x = torch.randn(4, 140)
    for variant in ("denoising", "vae"):
        model = build_model(variant, 140, 4).eval()
        torch.testing.assert_close(model(x), model(x))
        total_a, _ = model.loss(x)
        total_b, _ = model.loss(x)
        torch.testing.assert_close(total_a, total_b)


def test_zscore_preprocessing_is_scale_and_offset_invariant() -> None:
    model = build_model("dense", 140, 4).eval()
    x = torch.randn(3, 140)
    torch.testing.assert_close(model(x), model(x * 7.0 + 3.0), atol=1e-4, rtol=1e-4)


def test_contractive_term_equals_the_squared_frobenius_norm_of_the_autograd_jacobian() -> None:
    torch.manual_seed(0)
    model = ContractiveAutoencoder(10, 3, hidden=6, lam=0.5)
    xp = torch.randn(4, 10)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(model.encode, xp[i : i + 1]).reshape(3, 10)
        torch.testing.assert_close(model.jacobian(xp[i : i + 1])[0], jac)
        torch.testing.assert_close(model.contraction(xp[i : i + 1])[0], jac.pow(2).sum())
    h = model.encode(xp)
    want = (
        0.5
        * torch.stack(
            [
                torch.autograd.functional.jacobian(model.encode, xp[i : i + 1]).pow(2).sum()
                for i in range(4)
            ]
        ).mean()
    )
    torch.testing.assert_close(model.penalty(xp, h), want)


def test_vae_kl_matches_the_closed_form() -> None:
    mu = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.2, -0.3], [0.0, 0.0]])
    var = logvar.exp()
    want = 0.5 * (var + mu.pow(2) - 1.0 - logvar).sum(dim=1)
    torch.testing.assert_close(VariationalAutoencoder.kl(mu, logvar), want)
    assert float(VariationalAutoencoder.kl(mu, logvar)[1]) == 0.0
    # the same KL from torch.distributions
    q = torch.distributions.Normal(mu, var.sqrt())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(
        VariationalAutoencoder.kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1)
    )


def test_vae_scores_from_the_mean_path() -> None:
    model = VariationalAutoencoder(140, 4).eval()
    x = torch.randn(5, 140)
    xp = model.prepare(x)
    mu, _ = model.posterior(xp)
    torch.testing.assert_close(model(x), model.decode(mu))


def test_sparse_l1_term_is_lambda_times_the_l1_norm_of_the_code() -> None:
    model = SparseL1Autoencoder(20, 5, l1=0.3)
    xp = torch.randn(6, 20)
    h = model.encode(xp)
    torch.testing.assert_close(model.penalty(xp, h), 0.3 * h.abs().sum(dim=1).mean())
    total, rec = model.loss(xp)
    assert total.item() > rec.item()


def test_kl_bernoulli_matches_the_definition() -> None:
    rho_hat = torch.tensor([0.1, 0.5, 0.05])
    want = sum(0.05 * torch.log(0.05 / r) + 0.95 * torch.log(0.95 / (1 - r)) for r in rho_hat)
    torch.testing.assert_close(kl_bernoulli(0.05, rho_hat), want)
    assert float(kl_bernoulli(0.05, torch.tensor([0.05]))) == pytest.approx(0.0, abs=1e-7)


def test_kl_sparsity_training_lowers_the_mean_hidden_activation() -> None:
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))

    def mean_activation(beta: float) -> float:
        torch.manual_seed(1)
        model = SparseKLAutoencoder(40, 16, rho=0.05, beta=beta)
        _steps(model, x, 80, lr=5e-3)
        with torch.no_grad():
            return float(model.encode(model.prepare(x)).mean())

    sparse, free = mean_activation(5.0), mean_activation(0.0)
    assert sparse < 0.15
    assert sparse < free / 2


def test_lstm_follows_the_seed_architecture() -> None:
    model = build_model("lstm", 140, 8)
    sizes = [
        (m.input_size, m.hidden_size) for m in (model.enc1, model.enc2, model.dec1, model.dec2)
    ]
    assert sizes == [(1, 16), (16, 8), (8, 8), (8, 16)]
    assert model.encode(torch.randn(3, 140)).shape == (3, 8)


def test_unknown_variant_and_option_are_training_errors_and_spec_rebuilds() -> None:
    with pytest.raises(TrainingError, match="unknown variant"):
        build_model("transformer", 140, 8)
    with pytest.raises(TrainingError, match="bad options"):
        build_model("dense", 140, 8, lam=0.1)
    with pytest.raises(TrainingError, match="noise"):
        build_model("denoising", 140, 8, noise="salt")
    spec = build_model("vae", 140, 3, beta=0.5).spec()
    rebuilt = build_model(spec["variant"], spec["input_dim"], spec["latent_dim"], **spec["options"])
    assert rebuilt.spec()["options"]["beta"] == 0.5


def test_each_variant_lists_the_options_its_constructors_take_with_their_types() -> None:
    assert variant_options("lstm") == {"zscore": bool}
    assert variant_options("dense") == {"hidden": int, "zscore": bool, "output": str}
    assert variant_options("sparse-kl") == {
        "rho": float,
        "beta": float,
        "hidden": int,
        "zscore": bool,
        "output": str,
    }
    with pytest.raises(TrainingError, match="unknown option 'hidden'"):
        build_model("lstm", 140, 8, hidden=32)
    with pytest.raises(TrainingError, match="sigma must be a finite number"):
        build_model("denoising", 140, 8, sigma=float("nan"))
    assert build_model("sparse-l1", 140, 8, l1=1).spec()["options"]["l1"] == 1.0  # int is a number


@pytest.mark.parametrize(
    ("variant", "option", "value"),
    [
        ("dense", "hidden", -1),
        ("sparse-l1", "l1", -0.1),
        ("sparse-kl", "beta", -1.0),
        ("contractive", "lam", -0.5),
        ("denoising", "sigma", -0.2),
        ("vae", "beta", -1.0),
    ],
)
def test_negative_weights_and_sizes_are_refused(variant: str, option: str, value: float) -> None:
    with pytest.raises(TrainingError, match=option):
        build_model(variant, 140, 8, **{option: value})
