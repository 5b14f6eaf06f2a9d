"""One contract suite run over every registered model (STYLE.md item 8; SPEC.md §1.2, §1.5, §2, §4).

A model gets these tests by being registered in ``bench.models.MODELS``: shapes and finite named
terms, gradients reaching every trained part, seeded determinism, state_dict round-trip,
encode/decode agreement, quantization modes, the temperature schedule, input validation, bf16
autocast, and the SPEC §2 parameter counts.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.data.spec import DataSpec
from bench.errors import ConfigError
from bench.models import MODELS, build_model, resolve_model_options
from sqvae.gaussian import GaussianQuantizer
from sqvae.quantizer import StochasticQuantizer

NAMES = MODELS.names()
IMAGE32 = DataSpec("shapes", "image", 3, 32)
LABELS = DataSpec("shapes-labels", "labels", 4, 32, 4)
IMAGE28 = DataSpec("shapes28", "image", 1, 28)
SPECS = {"image32": IMAGE32, "labels": LABELS, "image28": IMAGE28}
BATCH = 4
IMAGE_TERMS = {"loss", "recon", "latent", "perplexity", "sse", "mse"}
LABEL_TERMS = {"loss", "recon", "latent", "perplexity", "acc"}

model_names = pytest.mark.parametrize("name", NAMES)
all_specs = pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))


def make_input(spec: DataSpec, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.kind == "image":
        return torch.rand(batch, spec.channels, spec.size, spec.size, generator=g)
    return torch.randint(0, spec.channels, (batch, spec.size, spec.size), generator=g)


# Narrow networks keep the suite fast; the paper-sized ones are covered by the parameter counts below.
SMALL = {"size_dict": 16, "dim_dict": 16}


def fitting(name: str, spec: DataSpec, options: dict) -> dict:
    """``options``, with two down-samplings instead of four where a model's minimal network (factor 16)
    does not divide the test image size (28 px)."""
    if resolve_model_options(name, spec, options)["network"] == "minimal" and spec.size % 16 and "num_down" not in options:
        return {**options, "num_down": 2}
    return options


def build(name: str, spec: DataSpec, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, spec, fitting(name, spec, {**SMALL, **options}))


def is_sq(model) -> bool:
    return isinstance(model.quantizer, StochasticQuantizer)


def latent_side(model) -> int:
    return model.size // model.downsampling


def assert_scalar_terms(terms: dict, expected: set) -> None:
    assert expected <= set(terms), f"missing terms {expected - set(terms)}"
    for key, value in terms.items():
        assert value.dim() == 0, key
        assert value.dtype == torch.float32, key
        assert torch.isfinite(value), key


# ----------------------------------------------------------------------------------------------
# shapes and terms


@model_names
@all_specs
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_forward_shapes_and_finite_terms(name, spec, train):
    model = build(name, spec).train(train)
    x = make_input(spec)
    out = model(x)
    side = latent_side(model)
    assert out.indices.shape == (BATCH, side, side) and out.indices.dtype == torch.long
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < model.size_dict
    if spec.kind == "image":
        assert out.recon.shape == x.shape and out.recon.is_floating_point()
        assert 0.0 <= out.recon.min().item() and out.recon.max().item() <= 1.0  # Sigmoid decoder
        assert_scalar_terms(out.terms, IMAGE_TERMS)
        assert out.terms["mse"].item() == pytest.approx(out.terms["sse"].item() / spec.dim_x, rel=1e-6)
    else:
        assert out.recon.shape == x.shape and not out.recon.is_floating_point()
        assert 0 <= int(out.recon.min()) and int(out.recon.max()) < model.likelihood.padded_classes
        assert_scalar_terms(out.terms, LABEL_TERMS)
        assert 0.0 <= out.terms["acc"].item() <= 1.0
    assert out.loss is out.terms["loss"] or torch.equal(out.loss, out.terms["loss"])
    assert out.loss.item() == pytest.approx((out.terms["recon"] + out.terms["latent"]).item(), rel=1e-6)
    assert 1.0 - 1e-4 <= out.terms["perplexity"].item() <= model.size_dict + 1e-3


# ----------------------------------------------------------------------------------------------
# gradients


def first_weight(module: nn.Module) -> nn.Parameter:
    return next(p for n, p in module.named_parameters() if n.endswith("weight"))


def heads(encoder) -> tuple[nn.Module, nn.Module | None]:
    """(mean head, variance head or None): res_m/res_v of the official networks, head_m/head_v of minimal."""
    if hasattr(encoder, "res_m"):
        return encoder.res_m, encoder.res_v
    return encoder.head_m, encoder.head_v


def key_parameters(model) -> dict[str, nn.Parameter]:
    """The trained parts a user relies on, by role."""
    mean_head, var_head = heads(model.encoder)
    params = {
        "encoder (first conv)": model.encoder.trunk[0].weight,
        "encoder (mean head)": first_weight(mean_head),
        "decoder (last conv)": model.decoder[-2].weight,
    }
    q = model.quantizer
    if isinstance(q.codebook, nn.Parameter):
        params["codebook"] = q.codebook
    for name in ("log_param_q_scalar", "var_logit"):
        if hasattr(q, name):
            params[name] = getattr(q, name)
    if isinstance(q, GaussianQuantizer) and q.variant != 1:
        params["variance head"] = first_weight(var_head)
    if isinstance(getattr(model.likelihood, "logvar_x", None), nn.Parameter):
        params["logvar_x"] = model.likelihood.logvar_x
    if hasattr(model.likelihood, "log_kappa_inv"):
        params["log_kappa_inv"] = model.likelihood.log_kappa_inv
    return params


@model_names
@pytest.mark.parametrize(
    "spec, options",
    [(IMAGE32, {}), (LABELS, {}), (IMAGE28, {}), (IMAGE28, {"recon": "learned"})],
    ids=["image32", "labels", "image28", "image28-learned-var"],
)
def test_gradients_reach_every_trained_part(name, spec, options):
    model = build(name, spec, **options).train()
    q = model.quantizer
    # the parts that must exist for this model
    if isinstance(q, GaussianQuantizer):
        assert (heads(model.encoder)[1] is not None) == (q.variant != 1)
    if options.get("recon") == "learned":
        assert isinstance(model.likelihood.logvar_x, nn.Parameter)
    elif spec.kind == "image":
        assert "likelihood.logvar_x" not in dict(model.named_parameters())
    codebook_before = q.codebook.detach().clone()
    model(make_input(spec)).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient on {pname}"
    for role, p in key_parameters(model).items():
        assert p.grad.abs().sum() > 0, f"zero gradient on {role}"
    if not isinstance(q.codebook, nn.Parameter):
        # EMA / reset codebooks are buffers, updated by the training step itself
        assert "quantizer.codebook" in dict(model.named_buffers())
        assert not torch.equal(q.codebook, codebook_before), "the codebook buffer did not move"


@model_names
def test_evaluation_passes_leave_the_model_state_alone(name):
    model = build(name, IMAGE28).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in ("deterministic", "stochastic"):
        model(make_input(IMAGE28), mode=mode)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ----------------------------------------------------------------------------------------------
# determinism and state


@model_names
@all_specs
def test_same_seed_same_loss_in_train_mode(name, spec):
    x = make_input(spec)

    def loss(build_seed: int, forward_seed: int) -> torch.Tensor:
        model = build(name, spec, seed=build_seed).train()
        torch.manual_seed(forward_seed)
        return model(x).loss.detach()

    first = loss(0, 1)
    assert torch.equal(first, loss(0, 1))
    if name.startswith("sqvae"):
        assert not torch.equal(first, loss(0, 2)), "Gumbel noise does not depend on the RNG"
    assert not torch.equal(first, loss(3, 1)), "the seed does not reach the initialisation"


@model_names
@all_specs
def test_state_dict_round_trip(name, spec):
    x = make_input(spec)
    a = build(name, spec, seed=0).train()
    opt = torch.optim.Adam(a.parameters(), lr=1e-3)
    for step in (1, 2):
        a.set_step(step * 10_000)
        loss = a(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = a.state_dict()
    if is_sq(a):
        assert state["quantizer.temperature"].item() == pytest.approx(math.exp(-0.2), rel=1e-6)
        assert state["quantizer.step"].item() == 20_000
    for key in {"vqvae-ema": ["ema_count", "ema_sum"], "vqvae-reset": ["ema_count", "ema_sum", "initialised"]}.get(name, []):
        assert f"quantizer.{key}" in state
    b = build(name, spec, seed=1)
    b.load_state_dict(state)
    for key, value in b.state_dict().items():
        assert torch.equal(value, state[key]), key
    a.eval(), b.eval()
    with torch.no_grad():
        oa, ob = a(x), b(x)
    assert torch.equal(oa.loss, ob.loss) and torch.equal(oa.indices, ob.indices) and torch.equal(oa.recon, ob.recon)
    a.train(), b.train()
    torch.manual_seed(5)
    la = a(x).loss
    torch.manual_seed(5)
    assert torch.equal(la, b(x).loss)


@model_names
@all_specs
def test_encode_and_decode_agree_with_the_deterministic_forward(name, spec):
    model = build(name, spec)
    model.train()
    model(make_input(spec, seed=1))  # move BN statistics / EMA codes away from their initial values
    model.eval()
    x = make_input(spec)
    out = model(x)
    codes = model.encode(x)
    assert torch.equal(codes, out.indices)
    decoded = model.decode(codes)
    if spec.kind == "image":
        torch.testing.assert_close(decoded, out.recon, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(decoded, out.recon)


@model_names
def test_quantization_modes(name):
    model = build(name, IMAGE32).eval()
    x = make_input(IMAGE32)
    torch.manual_seed(0)
    det = model(x, mode="deterministic")
    torch.manual_seed(1)
    det2 = model(x, mode="deterministic")
    assert torch.equal(det.indices, det2.indices) and torch.equal(det.loss, det2.loss)
    torch.manual_seed(0)
    sto = model(x, mode="stochastic")
    torch.manual_seed(0)
    assert torch.equal(sto.indices, model(x, mode="stochastic").indices)  # repeatable under a seed
    torch.manual_seed(1)
    sto_other = model(x, mode="stochastic")
    if is_sq(model):
        assert not torch.equal(sto.indices, sto_other.indices), "stochastic codes ignore the RNG"
    else:
        assert torch.equal(sto.indices, det.indices) and torch.equal(sto_other.indices, det.indices)


@model_names
def test_set_step_follows_the_temperature_schedule(name):
    model = build(name, IMAGE28, tau0=2.0, tau_decay=1e-3, tau_min=0.1) if name.startswith("sqvae") else build(name, IMAGE28)
    if not is_sq(model):
        model.set_step(1000)  # accepted and ignored: VQ-VAE has no schedule
        return
    assert model.quantizer.temperature.item() == pytest.approx(2.0)
    for step in (1, 500, 2000, 5000):
        model.set_step(step)
        assert model.quantizer.temperature.item() == pytest.approx(max(2.0 * math.exp(-1e-3 * step), 0.1), rel=1e-6)
    paper = build(name, IMAGE28)
    for step in (1, 156_300):
        paper.set_step(step)
        assert paper.quantizer.temperature.item() == pytest.approx(math.exp(-1e-5 * step), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# bf16 autocast


@model_names
@pytest.mark.parametrize("spec", [IMAGE28, LABELS], ids=["image28", "labels"])
def test_bf16_autocast_keeps_logits_and_losses_in_float32(name, spec):
    model = build(name, spec).train()
    seen: dict[str, torch.dtype] = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.update(encoder=o[0].dtype))
    model.quantizer.register_forward_hook(lambda m, i, o: seen.update(z_q=o.z_q.dtype, latent=o.latent_loss.dtype))
    if is_sq(model):
        logits_fn = model.quantizer.logits

        def recording_logits(z_flat, ctx):
            out = logits_fn(z_flat, ctx)
            seen.update(logits=out.dtype)
            return out

        model.quantizer.logits = recording_logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_input(spec))
    assert seen["encoder"] == torch.bfloat16, "autocast was not in effect"
    assert seen["z_q"] == torch.float32 and seen["latent"] == torch.float32
    if is_sq(model):
        assert seen["logits"] == torch.float32
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert_scalar_terms(out.terms, IMAGE_TERMS if spec.kind == "image" else LABEL_TERMS)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------------------------
# SPEC §2 parameter counts (encoder + decoder + codebook + s [+ log_kappa_inv])

PAPER_SPECS = {
    "mnist": DataSpec("mnist", "image", 1, 28),
    "fashion-mnist": DataSpec("fashion-mnist", "image", 1, 28),
    "cifar10": DataSpec("cifar10", "image", 3, 32),
    "celeba": DataSpec("celeba", "image", 3, 64),
    "celebamask-hq": DataSpec("celebamask-hq", "labels", 19, 64, 19),
}


@pytest.mark.parametrize(
    "dataset, name, count",
    [
        ("mnist", "sqvae-gauss-1", 240_386),
        ("fashion-mnist", "sqvae-gauss-1", 248_578),
        ("cifar10", "sqvae-gauss-1", 341_252),
        ("celeba", "sqvae-gauss-1", 630_532),
        ("celeba", "sqvae-gauss-2", 671_876),
        ("celeba", "sqvae-gauss-3", 671_876),
        ("celeba", "sqvae-gauss-4", 671_876),
        ("celebamask-hq", "sqvae-vmf", 354_989),
    ],
)
def test_parameter_counts_match_spec(dataset, name, count):
    model = build_model(name, PAPER_SPECS[dataset])
    assert sum(p.numel() for p in model.parameters()) == count
    # the plain VQ-VAE baseline shares the networks and codebook; it only lacks s
    if name in ("sqvae-gauss-1", "sqvae-vmf"):
        assert sum(p.numel() for p in build_model("vqvae", PAPER_SPECS[dataset]).parameters()) == count - 1


def test_paper_defaults_per_dataset():
    mnist = resolve_model_options("sqvae-gauss-1", PAPER_SPECS["mnist"])
    assert (mnist["network"], mnist["size_dict"], mnist["dim_dict"], mnist["num_rb"]) == ("net_28", 128, 64, 2)
    assert mnist["log_param_q_init"] == pytest.approx(math.log(10.0)) and mnist["recon"] == "arelbo"
    celeba = resolve_model_options("sqvae-gauss-3", PAPER_SPECS["celeba"])
    assert (celeba["network"], celeba["size_dict"], celeba["num_rb"]) == ("net_64", 512, 6)
    assert celeba["log_param_q_init"] == pytest.approx(math.log(20.0))
    mask = resolve_model_options("sqvae-vmf", PAPER_SPECS["celebamask-hq"])
    assert (mask["network"], mask["size_dict"], mask["dim_dict"]) == ("label", 64, 65)
    assert mask["log_param_q_init"] == pytest.approx(math.log(0.05))
    assert mask["log_kappa_inv_init"] == pytest.approx(math.log(0.01))
    assert resolve_model_options("sqvae-gauss-1", IMAGE28)["tau_decay"] == 1e-5
    assert resolve_model_options("vqvae", IMAGE28)["beta"] == 0.25


# ----------------------------------------------------------------------------------------------
# errors


@model_names
@pytest.mark.parametrize(
    "spec, options, match",
    [
        (IMAGE32, {"size_dict": 1}, "size_dict"),
        (IMAGE32, {"size_dict": 0}, "size_dict"),
        (IMAGE32, {"dim_dict": 0}, "dim_dict"),
        (IMAGE32, {"dim_dict": -4}, "dim_dict"),
        (IMAGE32, {"dim_dict": 1, "network": "net_32"}, "dim_dict"),
        (IMAGE32, {"num_rb": 0, "network": "net_32"}, "num_rb"),
        (IMAGE32, {"network": "net_99"}, "network"),
        (DataSpec("shapes", "image", 3, 30), {"network": "net_32"}, "multiple of 4"),
        (DataSpec("shapes", "image", 3, 0), {"network": "net_32"}, "multiple of 4"),
        (DataSpec("shapes", "image", 0, 32), {}, "in_channels"),
        (DataSpec("shapes-labels", "labels", 4, 36, 4), {"network": "label"}, "multiple of 8"),
        (DataSpec("shapes", "image", 3, 24), {"network": "minimal"}, "multiple of 16"),
        (IMAGE32, {"network": "minimal", "width": 0}, "width"),
        (IMAGE32, {"network": "minimal", "depth": -1}, "depth"),
        (IMAGE32, {"network": "minimal", "num_down": 0}, "num_down"),
        (IMAGE32, {"network": "minimal", "stride": 3}, "stride"),
        (DataSpec("shapes-labels", "labels", 1, 32, 1), {}, "num_classes"),
        (IMAGE32, {"recon": "l1"}, "recon"),
        (IMAGE32, {"recon_variance": 0.0}, "recon_variance"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_setting(name, spec, options, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, spec, options)


def test_unknown_gaussian_variant_raises():
    for variant in (0, 5, "2"):
        with pytest.raises(ValueError, match="variant"):
            GaussianQuantizer(8, 4, variant)


@model_names
def test_bad_inputs_raise_value_error(name):
    image = build(name, IMAGE32).eval()
    with pytest.raises(ValueError, match="input must be"):
        image(torch.rand(2, 1, 32, 32))  # wrong channel count
    with pytest.raises(ValueError, match="input must be"):
        image(torch.rand(2, 3, 28, 28))  # wrong size
    with pytest.raises(ValueError, match="input must be"):
        image(torch.rand(3, 32, 32))  # missing batch axis
    with pytest.raises(ValueError, match="quantization mode"):
        image(make_input(IMAGE32), mode="hard")
    labels = build(name, LABELS).eval()
    for bad in (4, -1):
        y = make_input(LABELS)
        y[0, 0, 0] = bad
        with pytest.raises(ValueError, match="labels out of range"):
            labels(y)
        with pytest.raises(ValueError, match="labels out of range"):
            labels.encode(y)
    with pytest.raises(ValueError, match="input must be"):
        labels(make_input(LABELS).float())  # labels must be integers


def test_unknown_model_name_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'sqvae-gauss-1'"):
        build_model("sqvae-gaus-1", IMAGE32)
    with pytest.raises(ConfigError, match="did you mean"):
        resolve_model_options("vqvae_ema", IMAGE32)
    with pytest.raises(ConfigError, match="valid: "):
        MODELS.get("no-such-model")


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="'sizedict'.*did you mean 'size_dict'"):
        resolve_model_options("sqvae-gauss-1", IMAGE32, {"sizedict": 32})
    with pytest.raises(ConfigError, match="beta"):
        resolve_model_options("sqvae-gauss-1", IMAGE32, {"beta": 0.1})  # a VQ-VAE option
    with pytest.raises(ConfigError, match="log_param_q_init"):
        build_model("vqvae", IMAGE32, {"log_param_q_init": 0.0})  # an SQ-VAE option
    with pytest.raises(ConfigError, match="recon"):
        resolve_model_options("sqvae-vmf", LABELS, {"recon": "arelbo"})  # image-only option
    with pytest.raises(ConfigError, match="'width'"):
        resolve_model_options("vqvae", IMAGE32, {"width": 8})  # an option of the minimal network only
    with pytest.raises(ConfigError, match="'num_rb'"):
        resolve_model_options("sqvae-minimal", IMAGE32, {"num_rb": 2})  # an official network's option
