"""Autoencoder variants behind one contract, and a name -> class registry.

Every model takes raw windows [B, L], applies its preprocessing (per-window z-score for
ECG) inside `forward`, and returns the clean reconstruction of the preprocessed window;
`loss` adds the variant's regulariser (and, for `denoising`, corrupts the input).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from training.errors import TrainingError

ZSCORE_EPS = 1e-6
# buffers a checkpoint may lack (it predates them): `load_state` keeps their defaults
OPTIONAL_BUFFERS = ("score_weight", "latent_mean", "latent_whiten", "latent_weight")
SPREAD_FLOOR = 0.1  # of the mean spread, added to each sample's spread (standardise_score)


def load_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load weights into a model (or a module holding one); buffers that a checkpoint from
    before them lacks keep their defaults (unit score weights, no latent term)."""
    defaults = {
        k: v for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] in OPTIONAL_BUFFERS
    }
    module.load_state_dict({**defaults, **state})
    for m in module.modules():
        if isinstance(m, Autoencoder):
            m.latent_term = bool(m._buffer("latent_weight") != 0)


def l1_sum(x: Tensor, recon: Tensor) -> Tensor:
    """Per-window L1 reconstruction loss summed over samples: [B]."""
    return (x - recon).abs().sum(dim=1)


class Autoencoder(nn.Module):
    """Base class: preprocessing, scoring and the (total, reconstruction) loss pair."""

    variant: ClassVar[str]

    def __init__(self, input_dim: int, latent_dim: int, *, zscore: bool = True) -> None:
        super().__init__()
        if input_dim < 2 or latent_dim < 1:
            raise TrainingError(f"bad model size: input_dim={input_dim}, latent_dim={latent_dim}")
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.zscore = zscore
        self.options: dict[str, Any] = {"zscore": zscore}
        # Per-sample weights of the score: ones = the plain L1 sum; `standardise_score` sets
        # them to 1 / (spread of that sample's error over normal beats), so the exported graph
        # scores a standardised residual and `score` stays one number.
        self.register_buffer("score_weight", torch.ones(input_dim))
        # The latent-distance term (`set_latent_distance`): score += latent_weight ·
        # ‖(h − latent_mean) · latent_whiten‖₂, the Mahalanobis distance of the window's code h
        # from the training normals' codes. Weight 0 (the default) leaves the plain score.
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_whiten", torch.zeros(latent_dim, latent_dim))
        self.register_buffer("latent_weight", torch.zeros(()))
        self.latent_term = False  # a Python flag, so an export without the term has no ops for it

    def prepare(self, x: Tensor) -> Tensor:
        """The model's input preprocessing: per-window z-score (population std) or identity."""
        if not self.zscore:
            return x
        mean = x.mean(dim=1, keepdim=True)
        std = (x - mean).pow(2).mean(dim=1, keepdim=True).sqrt()
        return (x - mean) / (std + ZSCORE_EPS)

    def encode(self, xp: Tensor) -> Tensor:
        """The latent code [B, latent_dim] of an already preprocessed window."""
        raise NotImplementedError

    def decode(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def reconstruct_prepared(self, xp: Tensor) -> Tensor:
        """Clean reconstruction of an already preprocessed window."""
        return self.decode(self.encode(xp))

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct_prepared(self.prepare(x))

    def score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(score [B], reconstruction [B, L]) — what the exported graph computes: the weighted
        L1 sum plus the latent-distance term; with the defaults (unit weights, latent weight
        0), the plain L1 sum."""
        xp = self.prepare(x)
        h = self.encode(xp)
        recon = self.decode(h)
        l1 = ((xp - recon).abs() * self._score_weight()).sum(dim=1)
        if not self.latent_term:
            return l1, recon
        return l1 + self._buffer("latent_weight") * self._latent_distance(h), recon

    def _buffer(self, name: str) -> Tensor:
        value = getattr(self, name)
        assert isinstance(value, Tensor)
        return value

    def _score_weight(self) -> Tensor:
        return self._buffer("score_weight")

    def _latent_distance(self, h: Tensor) -> Tensor:
        d = (h - self._buffer("latent_mean")) @ self._buffer("latent_whiten")
        return d.pow(2).sum(dim=1).sqrt()

    @property
    def latent_scored(self) -> bool:
        return self.latent_term

    @property
    def architecture(self) -> str:
        """The network's variant (an ensemble's: its members')."""
        return self.variant

    def set_latent_distance(self, x_normal: Tensor, weight: float = 1.0) -> float:
        """Add the Mahalanobis distance of the code from these (training) normals' codes.

        Mean and covariance of their codes (ridge 1e-3 of the mean variance, at least 1e-4 of
        the codes' mean square); the term is
        scaled so that on these windows its median is `weight` times the median of the
        reconstruction score. Sets the buffers and returns the scale."""
        with torch.no_grad():
            self.latent_term = False
            xp = self.prepare(x_normal)
            h = self.encode(xp).double()
            recon_score = self.score(x_normal)[0].double()
            mean = h.mean(dim=0)
            cov = torch.cov(h.T).reshape(h.shape[1], h.shape[1])
            # ridge: 1e-3 of the mean code variance, and at least 1e-4 of the codes' mean square,
            # so a barely trained model whose codes hardly vary does not turn float32 jitter in
            # the code into score (a trained model's variance is far above that floor)
            ridge = torch.maximum(1e-3 * cov.diagonal().mean(), 1e-4 * h.pow(2).mean())
            cov = cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype)
            whiten = torch.linalg.inv(torch.linalg.cholesky(cov)).T  # ‖(h − μ)·W‖ = Mahalanobis
            self._buffer("latent_mean").copy_(mean)
            self._buffer("latent_whiten").copy_(whiten)
            dist = self._latent_distance(h.float())
            scale = weight * float(recon_score.median() / dist.double().median().clamp_min(1e-12))
            self._buffer("latent_weight").fill_(scale)
            self.latent_term = True
        return scale

    @property
    def standardised(self) -> bool:
        return bool((self._score_weight() != 1).any())

    def apply_score(self, kind: str, x_normal: Tensor) -> None:
        """Set the score up from the model's own training normals: "l1" leaves the plain L1
        sum, "std" standardises each sample's error, "latent" adds the latent distance."""
        if kind == "std":
            self.standardise_score(x_normal)
        elif kind == "latent":
            self.set_latent_distance(x_normal)
        elif kind != "l1":
            raise TrainingError(f"unknown score {kind!r}: l1, std or latent")

    def standardise_score(self, x_normal: Tensor, floor: float = SPREAD_FLOOR) -> Tensor:
        """Weight each sample's error by 1 / its spread over these normal windows.

        Spread s_j = mean |x_j − r_j| over the windows; weights w_j = 1 / (s_j + floor · mean s),
        rescaled to mean 1 (the floor keeps a flat, perfectly reconstructed stretch from
        dominating). Sets and returns the weights."""
        with torch.no_grad():
            weight = self._score_weight()
            weight.fill_(1.0)
            xp = self.prepare(x_normal)
            spread = (xp - self.reconstruct_prepared(xp)).abs().mean(dim=0)
            w = 1.0 / (spread + floor * spread.mean() + 1e-12)
            weight.copy_(w / w.mean())
        return weight.clone()

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(total training loss, mean L1-sum reconstruction loss) for a batch."""
        xp = self.prepare(x)
        rec = l1_sum(xp, self.reconstruct_prepared(xp)).mean()
        return rec, rec

    def spec(self) -> dict[str, Any]:
        """Everything `build_model` needs to rebuild this model."""
        return {
            "variant": self.variant,
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            "options": dict(self.options),
        }


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise TrainingError(f"{name} must be >= 0, got {value}")


# ---------------------------------------------------------------- dense family


class DenseAutoencoder(Autoencoder):
    """Undercomplete MLP: L -> hidden -> latent -> hidden -> L (ReLU hidden layers)."""

    variant = "dense"
    latent_activation: ClassVar[str] = "identity"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        *,
        hidden: int = 0,
        zscore: bool = True,
        output: str = "linear",
    ) -> None:
        super().__init__(input_dim, latent_dim, zscore=zscore)
        if hidden < 0:
            raise TrainingError(f"hidden must be >= 0 (0 = automatic), got {hidden}")
        hidden = int(hidden) or (128 if input_dim <= 256 else 256)
        if output not in ("linear", "sigmoid"):
            raise TrainingError(f"output must be 'linear' or 'sigmoid', got {output!r}")
        self.options.update(hidden=hidden, output=output)
        self.enc1 = nn.Linear(input_dim, hidden)
        self.enc2 = nn.Linear(hidden, latent_dim)
        self.dec1 = nn.Linear(latent_dim, hidden)
        self.dec2 = nn.Linear(hidden, input_dim)
        self.output = output

    def encode(self, xp: Tensor) -> Tensor:
        z = self.enc2(torch.relu(self.enc1(xp)))
        return torch.sigmoid(z) if self.latent_activation == "sigmoid" else z

    def decode(self, h: Tensor) -> Tensor:
        out = self.dec2(torch.relu(self.dec1(h)))
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def corrupt(self, xp: Tensor) -> Tensor:
        """Input corruption during training (identity except for `denoising`)."""
        return xp

    def penalty(self, inp: Tensor, h: Tensor) -> Tensor:
        """The variant's regulariser for a batch (0 for the plain undercomplete model)."""
        return h.new_zeros(())

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xp = self.prepare(x)
        inp = self.corrupt(xp) if self.training else xp
        h = self.encode(inp)
        rec = l1_sum(xp, self.decode(h)).mean()
        return rec + self.penalty(inp, h), rec


class SparseL1Autoencoder(DenseAutoencoder):
    """Sparse code by an L1 penalty on the latent activations: λ·Σ|h|."""

    variant = "sparse-l1"

    def __init__(self, input_dim: int, latent_dim: int, *, l1: float = 0.05, **kw: Any) -> None:
        super().__init__(input_dim, latent_dim, **kw)
        _non_negative("l1", l1)
        self.l1 = float(l1)
        self.options["l1"] = self.l1

    def penalty(self, inp: Tensor, h: Tensor) -> Tensor:
        return self.l1 * h.abs().sum(dim=1).mean()


def kl_bernoulli(rho: float, rho_hat: Tensor, eps: float = 1e-6) -> Tensor:
    """Σ_j KL(ρ ‖ ρ̂_j) between Bernoulli distributions."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


class SparseKLAutoencoder(DenseAutoencoder):
    """Sparse code by KL(ρ‖ρ̂) on the mean sigmoid latent activation over the batch."""

    variant = "sparse-kl"
    latent_activation = "sigmoid"

    def __init__(
        self, input_dim: int, latent_dim: int, *, rho: float = 0.05, beta: float = 1.0, **kw: Any
    ) -> None:
        super().__init__(input_dim, latent_dim, **kw)
        if not 0.0 < rho < 1.0:
            raise TrainingError(f"sparsity target rho must be in (0, 1), got {rho}")
        _non_negative("beta", beta)
        self.rho, self.beta = float(rho), float(beta)
        self.options.update(rho=self.rho, beta=self.beta)

    def penalty(self, inp: Tensor, h: Tensor) -> Tensor:
        return self.beta * kl_bernoulli(self.rho, h.mean(dim=0))


class ContractiveAutoencoder(DenseAutoencoder):
    """Penalises the encoder's sensitivity: λ·‖∂h/∂x‖²_F, the exact Jacobian of the MLP."""

    variant = "contractive"

    def __init__(self, input_dim: int, latent_dim: int, *, lam: float = 0.01, **kw: Any) -> None:
        super().__init__(input_dim, latent_dim, **kw)
        _non_negative("lam", lam)
        self.lam = float(lam)
        self.options["lam"] = self.lam

    def jacobian(self, xp: Tensor) -> Tensor:
        """∂h/∂x per window, [B, latent, L]: W2 · diag(relu'(W1 x + b1)) · W1."""
        gate = (self.enc1(xp) > 0).to(xp.dtype)  # [B, hidden]
        return torch.einsum("kh,bh,hl->bkl", self.enc2.weight, gate, self.enc1.weight)

    def contraction(self, xp: Tensor) -> Tensor:
        """‖∂h/∂x‖²_F per window [B], computed without materialising the Jacobian."""
        gate = (self.enc1(xp) > 0).to(xp.dtype)
        # ‖W2 D W1‖² = Σ_{h,h'} (W2ᵀW2)_{hh'} D_h D_h' (W1W1ᵀ)_{hh'}
        m = (self.enc2.weight.T @ self.enc2.weight) * (self.enc1.weight @ self.enc1.weight.T)
        return torch.einsum("bh,hk,bk->b", gate, m, gate)

    def penalty(self, inp: Tensor, h: Tensor) -> Tensor:
        return self.lam * self.contraction(inp).mean()


class DenoisingAutoencoder(DenseAutoencoder):
    """Learns to remove Gaussian or speckle corruption; the target is the clean window."""

    variant = "denoising"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        *,
        noise: str = "gaussian",
        sigma: float = 0.2,
        **kw: Any,
    ) -> None:
        super().__init__(input_dim, latent_dim, **kw)
        if noise not in ("gaussian", "speckle"):
            raise TrainingError(f"noise must be 'gaussian' or 'speckle', got {noise!r}")
        _non_negative("sigma", sigma)
        self.noise, self.sigma = noise, float(sigma)
        self.options.update(noise=noise, sigma=self.sigma)

    def corrupt(self, xp: Tensor) -> Tensor:
        n = torch.randn_like(xp) * self.sigma
        return xp + n if self.noise == "gaussian" else xp + xp * n


class VariationalAutoencoder(DenseAutoencoder):
    """VAE with a diagonal Gaussian posterior; scores and exports the mean path."""

    variant = "vae"

    def __init__(self, input_dim: int, latent_dim: int, *, beta: float = 1.0, **kw: Any) -> None:
        super().__init__(input_dim, latent_dim, **kw)
        _non_negative("beta", beta)
        self.beta = float(beta)
        self.options["beta"] = self.beta
        self.enc_logvar = nn.Linear(self.enc1.out_features, latent_dim)

    def posterior(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        hidden = torch.relu(self.enc1(xp))
        return self.enc2(hidden), self.enc_logvar(hidden)

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(μ, σ²) ‖ N(0, 1)) per window, closed form: [B]."""
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)

    def encode(self, xp: Tensor) -> Tensor:
        return self.posterior(xp)[0]

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xp = self.prepare(x)
        mu, logvar = self.posterior(xp)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        rec = l1_sum(xp, self.decode(z)).mean()
        return rec + self.beta * self.kl(mu, logvar).mean(), rec


# ---------------------------------------------------------------- sequence model


class LSTMAutoencoder(Autoencoder):
    """The seed's sequence autoencoder, batched: LSTM(1→2E), LSTM(2E→E) → repeat E-vector
    L times → LSTM(E→E), LSTM(E→2E) → Linear(2E→1). `latent_dim` is E."""

    variant = "lstm"

    def __init__(self, input_dim: int, latent_dim: int, *, zscore: bool = True) -> None:
        super().__init__(input_dim, latent_dim, zscore=zscore)
        e = latent_dim
        self.enc1 = nn.LSTM(1, 2 * e, batch_first=True)
        self.enc2 = nn.LSTM(2 * e, e, batch_first=True)
        self.dec1 = nn.LSTM(e, e, batch_first=True)
        self.dec2 = nn.LSTM(e, 2 * e, batch_first=True)
        self.out = nn.Linear(2 * e, 1)

    def encode(self, xp: Tensor) -> Tensor:
        seq, _ = self.enc1(xp.unsqueeze(-1))
        _, (h_n, _) = self.enc2(seq)
        code: Tensor = h_n[-1]  # [B, E]
        return code

    def decode(self, h: Tensor) -> Tensor:
        seq = h.unsqueeze(1).expand(-1, self.input_dim, -1)
        seq, _ = self.dec1(seq)
        seq, _ = self.dec2(seq)
        out: Tensor = self.out(seq).squeeze(-1)
        return out


MODELS: dict[str, type[Autoencoder]] = {
    cls.variant: cls
    for cls in (
        DenseAutoencoder,
        SparseL1Autoencoder,
        SparseKLAutoencoder,
        ContractiveAutoencoder,
        DenoisingAutoencoder,
        VariationalAutoencoder,
        LSTMAutoencoder,
    )
}


def variant_options(variant: str) -> dict[str, type]:
    """The options a variant takes (keyword arguments of its constructors), with their types."""
    cls = MODELS.get(variant) if isinstance(variant, str) else None
    if cls is None:
        raise TrainingError(f"unknown variant {variant!r} (expected one of {', '.join(MODELS)})")
    options: dict[str, type] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty:
                options.setdefault(p.name, type(p.default))
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break  # this constructor passes nothing further up
    return options


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def check_options(variant: str, options: Any) -> None:
    """TrainingError naming the option unless every option is one the variant takes, typed."""
    if not isinstance(options, dict):
        raise TrainingError(f"options must be a table of KEY = VALUE, got {options!r}")
    allowed = variant_options(variant)
    for key, value in options.items():
        kind = allowed.get(key)
        if kind is None:
            raise TrainingError(
                f"bad options for variant {variant!r}: unknown option {key!r} "
                f"(it takes {', '.join(sorted(allowed))})"
            )
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise TrainingError(
                f"bad options for variant {variant!r}: {key} must be "
                f"{_KINDS.get(kind, kind.__name__)}, got {value!r}"
            )


class Ensemble(Autoencoder):
    """The K cross-conformal fold models deployed together: score = the mean of their scores,
    reconstruction = the mean of their reconstructions (what `peak_index` is taken from).

    `ecg-train fit --deploy ensemble`; the nested CV measures it beside the single model
    (BENCHMARKS.md, "Calibration"): the same false-alarm rate at the threshold the fold
    models' out-of-fold scores give, and no ranking gain that holds across splits. Costs K
    times the inference, and its score is the members' mean L1 sum (`ecg.score` =
    `mean_of_K(l1_sum)`), not the L1 sum of the mean reconstruction it outputs."""

    variant: ClassVar[str] = "ensemble"

    def __init__(self, members: list[Autoencoder]) -> None:
        if len(members) < 2 or len({(m.variant, m.input_dim, m.zscore) for m in members}) != 1:
            raise TrainingError("an ensemble needs >= 2 members of one variant, length, zscore")
        first = members[0]
        super().__init__(first.input_dim, first.latent_dim, zscore=first.zscore)
        self.members = nn.ModuleList(members)

    @property
    def architecture(self) -> str:
        return self._members()[0].variant

    def _members(self) -> list[Autoencoder]:
        return [m for m in self.members if isinstance(m, Autoencoder)]

    def score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        outs = [m.score(x) for m in self._members()]
        score = torch.stack([s for s, _ in outs]).mean(dim=0)
        return score, torch.stack([r for _, r in outs]).mean(dim=0)

    def reconstruct_prepared(self, xp: Tensor) -> Tensor:
        return torch.stack([m.reconstruct_prepared(xp) for m in self._members()]).mean(dim=0)

    @property
    def standardised(self) -> bool:
        return self._members()[0].standardised

    @property
    def latent_scored(self) -> bool:
        return self._members()[0].latent_scored

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise TrainingError("an ensemble is deployed, not trained: train its members")

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "members": [m.spec() for m in self._members()]}


def model_from_spec(spec: dict[str, Any]) -> Autoencoder:
    """An untrained model of a checkpoint's `model` spec (an ensemble: its members)."""
    if spec["variant"] == Ensemble.variant:
        return Ensemble([model_from_spec(m) for m in spec["members"]])
    return build_model(spec["variant"], spec["input_dim"], spec["latent_dim"], **spec["options"])


def build_model(variant: str, input_dim: int, latent_dim: int, **options: Any) -> Autoencoder:
    """Instantiate a registered variant; unknown variants and options are a TrainingError."""
    check_options(variant, options)
    return MODELS[variant](input_dim, latent_dim, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, Any]:
    """`--option KEY=VALUE` strings to a variant options dict (values typed as bool, int, float
    or left as text; check_options then checks them against the variant)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainingError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options
