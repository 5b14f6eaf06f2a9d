"""The datasets of sqvae-bench (SPEC.md §3): named loaders that return uint8 train / val / test tensors.

    splits = load_dataset("cifar10", root="~/data", download=True)
    splits.spec, splits.train.shape  # DataSpec(name='cifar10', kind='image', ...), (40000, 3, 32, 32)

Built-in names: mnist, fashion-mnist (option ``size``: 28 or 32), cifar10, svhn, celeba,
celebamask-hq, shapes, shapes-labels. A new
dataset is a loader ``loader(root, download, seed, *, <options>) -> Splits`` and its DataSpec
(or a function of the options returning it), added with ``register_dataset``, the same call the
built-ins use. ``dataset_spec`` answers what a dataset is without loading it, ``check_dataset``
whether its files are there and sound (names, headers, sizes) without loading them.
``load_dataset(name, with_test=False)`` loads train and val only (``splits.test`` is None): a
search never reads the test split (see ``bench.data.registry``).
"""
from bench.data import celeba, celebamask, shapes, svhn, torchvision_sets
from bench.data.registry import (
    DATASETS,
    ENV_VAR,
    check_dataset,
    dataset_names,
    dataset_options,
    dataset_spec,
    load_dataset,
    register_dataset,
)
from bench.data.shapes import make_shapes
from bench.data.spec import DataSpec, Splits

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "DataSpec",
    "Splits",
    "check_dataset",
    "dataset_names",
    "dataset_options",
    "dataset_spec",
    "load_dataset",
    "make_shapes",
    "register_dataset",
]

_BUILTINS = {  # name: (loader, spec, check)
    "mnist": (torchvision_sets.load_mnist, torchvision_sets.mnist_spec, torchvision_sets.check_mnist),
    "fashion-mnist": (torchvision_sets.load_fashion_mnist, torchvision_sets.fashion_mnist_spec,
                      torchvision_sets.check_fashion_mnist),
    "cifar10": (torchvision_sets.load_cifar10, DataSpec("cifar10", "image", 3, 32), torchvision_sets.check_cifar10),
    "svhn": (svhn.load_svhn, svhn.SPEC, svhn.check_svhn),
    "celeba": (celeba.load_celeba, celeba.SPEC, celeba.check_celeba),
    "celebamask-hq": (celebamask.load_celebamask_hq, celebamask.SPEC, celebamask.check_celebamask_hq),
    "shapes": (shapes.load_shapes, shapes.shapes_spec, None),
    "shapes-labels": (shapes.load_shapes_labels, shapes.shapes_labels_spec, None),
}
for _name, (_loader, _spec, _check) in _BUILTINS.items():
    register_dataset(_name, _loader, _spec, _check)
