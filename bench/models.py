"""The model registry: the names suites use, mapped to constructors with each model's defaults.

``resolve_model_options(name, spec, overrides)`` returns every option of a model on a dataset (paper
defaults of sqvae.paper, then the model's own defaults, then the overrides); ``build_model`` builds it.
The resolved options are what a run's config records and hashes. The network family's options
(``num_rb`` for the official families; width, depth, num_down, stride for ``minimal``) follow the
``network`` the options end with, so any model runs on any family and an option of another family is
an unknown option.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from baselines.vq import EmaVectorQuantizer, ResetVectorQuantizer, VectorQuantizer
from bench.data.spec import DataSpec
from bench.errors import ConfigError
from bench.registry import Registry, did_you_mean
from sqvae.autoencoder import Autoencoder
from sqvae.gaussian import GaussianQuantizer
from sqvae.likelihoods import GaussianImageLikelihood, VmfLabelLikelihood
from sqvae.minimal import MinimalQuantizer
from sqvae.networks import NETWORKS, network_option_defaults
from sqvae.paper import VMF_LOG_PARAM_Q_INIT, dataset_settings, network_for
from sqvae.vmf import VmfQuantizer

COMMON_KEYS = ("network", "size_dict", "dim_dict")
IMAGE_DEFAULTS = {"recon": "arelbo", "recon_variance": 0.1}
LABEL_DEFAULTS = {"log_kappa_inv_init": math.log(0.01)}
TAU_DEFAULTS = {"tau0": 1.0, "tau_decay": 1e-5, "tau_min": 0.0}


@dataclass(frozen=True)
class ModelEntry:
    """make_quantizer(size_dict, dim_dict, **quantizer options) -> quantizer module.

    defaults: the quantizer options and their defaults; dataset_keys: options that take the
    dataset's paper value (sqvae.paper) when the suite does not set them; common_defaults: the model's
    own values of COMMON_KEYS and network options, over the dataset's (e.g. its own network family)."""

    name: str
    description: str
    make_quantizer: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    dataset_keys: tuple[str, ...] = ()
    common_defaults: dict = field(default_factory=dict)


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model under ``entry.name``; the built-ins use this too."""
    return MODELS.register(entry.name, entry)


def resolve_model_options(name: str, spec: DataSpec, overrides: dict | None = None) -> dict:
    """All options of model ``name`` on dataset ``spec``: dataset paper settings < model defaults < overrides.

    Raises ConfigError for an unknown model or option (naming the valid ones)."""
    entry = MODELS.get(name)
    paper = dataset_settings(spec.name)
    options = {"network": network_for(spec.kind, spec.size), **{k: paper[k] for k in COMMON_KEYS[1:]}}
    network = (overrides or {}).get("network", entry.common_defaults.get("network", options["network"]))
    if network not in NETWORKS:
        raise ConfigError(f"model '{name}': network must be one of {', '.join(NETWORKS)}"
                          f"{did_you_mean(str(network), list(NETWORKS))}; got {network!r}")
    options.update(network_option_defaults(network, paper["num_rb"]))
    options.update({k: v for k, v in entry.common_defaults.items() if k in options})
    options.update(IMAGE_DEFAULTS if spec.kind == "image" else LABEL_DEFAULTS)
    options.update({k: paper.get(k, v) if k in entry.dataset_keys else v for k, v in entry.defaults.items()})
    for key, value in (overrides or {}).items():
        if key not in options:
            raise ConfigError(
                f"model '{name}' has no option '{key}'{did_you_mean(key, list(options))}; valid: {', '.join(options)}"
            )
        options[key] = value
    return options


def build_model(name: str, spec: DataSpec, options: dict | None = None) -> Autoencoder:
    """Build model ``name`` for dataset ``spec`` from (possibly partial) options; see resolve_model_options."""
    entry = MODELS.get(name)
    opts = resolve_model_options(name, spec, options)
    quantizer = entry.make_quantizer(opts["size_dict"], opts["dim_dict"], **{k: opts[k] for k in entry.defaults})
    if spec.kind == "image":
        likelihood = GaussianImageLikelihood(spec.dim_x, opts["recon"], opts["recon_variance"])
    else:
        likelihood = VmfLabelLikelihood(spec.channels, spec.size * spec.size, opts["log_kappa_inv_init"])
    network_options = {k: opts[k] for k in network_option_defaults(opts["network"], num_rb=0)}  # its keys
    return Autoencoder(opts["network"], spec.channels, spec.size, quantizer, likelihood, network_options)


def _gaussian(variant: int) -> ModelEntry:
    return ModelEntry(
        name=f"sqvae-gauss-{variant}",
        description=f"Gaussian SQ-VAE type {'I II III IV'.split()[variant - 1]} (SPEC §1.3)",
        make_quantizer=lambda K, d, **kw: GaussianQuantizer(K, d, variant, **kw),
        defaults={"log_param_q_init": math.log(10.0), **TAU_DEFAULTS},
        dataset_keys=("log_param_q_init",),
    )


for _variant in (1, 2, 3, 4):
    register_model(_gaussian(_variant))
register_model(
    ModelEntry(
        "sqvae-vmf",
        "vMF SQ-VAE (SPEC §1.4); kappa_phi = 1 + e^s",
        VmfQuantizer,
        {"log_param_q_init": VMF_LOG_PARAM_Q_INIT, **TAU_DEFAULTS},
    )
)
register_model(
    ModelEntry(
        "sqvae-minimal",
        "Minimal-SQVAE: type-I Gaussian SQ-VAE, sigma^2_phi = sigmoid(v) 2 sigma^2_init, codebook and "
        "sigma^2_init from the first batch, minimal network, K 32, d 8",
        MinimalQuantizer,
        {"var_q_init": 5.0, **TAU_DEFAULTS, "tau_min": 1e-5},
        common_defaults={"network": "minimal", "size_dict": 32, "dim_dict": 8},
    )
)
register_model(ModelEntry("vqvae", "VQ-VAE: nearest code, straight-through, beta 0.25", VectorQuantizer, {"beta": 0.25, "codebook_init": "normal"}))
register_model(
    ModelEntry(
        "vqvae-ema",
        "VQ-VAE with EMA codebook (gamma 0.99, Laplace eps 1e-5)",
        EmaVectorQuantizer,
        {"beta": 0.25, "gamma": 0.99, "epsilon": 1e-5, "codebook_init": "normal"},
    )
)
register_model(
    ModelEntry(
        "vqvae-reset",
        "VQ-VAE with EMA codebook and Jukebox-style dead-code reset (threshold 1.0)",
        ResetVectorQuantizer,
        {"beta": 0.25, "gamma": 0.99, "threshold": 1.0},
    )
)
