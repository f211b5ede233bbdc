"""The components of one run, built from its config: model, losses, optimizers, seeds.

Shared by the training loop (:mod:`harness.core.trainer`) and by ``load_model``
(:mod:`harness.core.checkpoint`), which rebuilds the model a checkpoint was trained with.
docs/METHODS.md sections 1, 2 and 4.
"""

from __future__ import annotations

import logging

import random

import numpy as np
import torch
from torch import nn

from harness.config import RunConfig
from harness.core.losses import create_loss, is_proxy_loss
from harness.core.memory import CrossBatchMemory
from harness.core.moments import KalmanMoments
from harness.core.model import create_model
from harness.core.pairs import positive_pair_problem
from harness.core.xml import XMLLoss
from harness.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def has_prototypes(config: RunConfig) -> bool:
    """The model carries prototypes for prototype pooling and for XML (docs/METHODS.md §2)."""
    return config.model.pooling == "prototype" or config.xml.enabled


def build_model(config: RunConfig) -> nn.Module:
    return create_model(config.model, with_prototypes=has_prototypes(config))


def build_losses(config: RunConfig, n_train: int, num_classes: int):
    """-> (CrossBatchMemory wrapping the plain loss, XMLLoss or None). docs/METHODS.md §1, §2, §4."""
    problem = positive_pair_problem(config)
    if problem:
        raise ConfigError(problem)
    if is_proxy_loss(config.loss.name) and config.memory.kind != "none":
        raise ConfigError(
            f"memory.kind: proxy loss {config.loss.name} has no reference set; "
            "use memory.kind=none or a pair-based loss"
        )
    loss, miner = create_loss(
        config.loss, num_classes=num_classes, embedding_size=config.model.embedding_size
    )
    mem = config.memory
    if mem.kind != "none" and mem.size is None and mem.fraction_capacity(n_train) < config.train.batch_size:
        # the sweep's pre-flight says so too; this is the line `harness train` shows
        logging.getLogger(__name__).warning(
            "memory.fraction %g of %d training images is %d embeddings, less than one batch of %d: "
            "the memory holds one batch (%d)", mem.fraction, n_train, mem.fraction_capacity(n_train),
            config.train.batch_size, config.train.batch_size)
    memory = CrossBatchMemory(
        loss,
        config.model.embedding_size,
        config.memory.capacity(n_train, config.train.batch_size),
        kind=config.memory.kind,
        miner=miner,
        start_iteration=config.memory.start_iteration,
        batch_loss_weight=config.memory.batch_loss_weight,
        kalman=KalmanMoments(**config.memory.kalman.model_dump()),
    )
    xml_loss = None
    if config.xml.enabled:
        xml_loss = XMLLoss(loss, miner, alpha=config.xml.alpha)
    return memory, xml_loss


def unique_parameters(params) -> list[nn.Parameter]:
    """``params`` without repeats (a parameter shared by two modules), in order."""
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def build_optimizers(config: RunConfig, model: nn.Module, loss_params: list[nn.Parameter]):
    """-> (AdamW, warm-up SGD or None, StepLR on the AdamW).

    The proxy parameters of a proxy loss form their own group at ``loss.proxy_lr``.
    The warm-up SGD trains the new layers (head, prototypes, and the loss's proxies)
    at ``optim.warmup_lr``.
    """
    opt = config.optim
    groups = [{"params": list(model.parameters()), "lr": opt.lr, "weight_decay": opt.weight_decay}]
    if loss_params:
        groups.append({"params": loss_params, "lr": config.loss.proxy_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=opt.lr_decay_every, gamma=opt.lr_decay
    )
    warmup = None
    if opt.warmup_epochs > 0:
        warmup = torch.optim.SGD(
            unique_parameters(list(model.new_parameters()) + loss_params), lr=opt.warmup_lr, momentum=0.9
        )
    return optimizer, warmup, scheduler


def probe_indices(n_train: int, probe_size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of the training images for the drift diagnostic."""
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.choice(n_train, size=min(probe_size, n_train), replace=False))
