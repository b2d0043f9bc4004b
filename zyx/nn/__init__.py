"""zyx.nn: modules (layers whose parameters are found automatically), losses, optimizers and schedules.

    model = zyx.nn.Sequential(zyx.nn.Linear(4, 8), zyx.nn.ReLU(), zyx.nn.Linear(8, 1))
    opt = zyx.nn.Adam(lr=1e-3)
    loss = zyx.nn.mse_loss(model(x), y)   # or zyx.nn.MSELoss()(model(x), y), zyx.nn.functional.mse_loss
    opt.update(model.parameters(), loss.backward(model.parameters()))
"""
from __future__ import annotations

from . import functional, init
from ..interpolate import interpolate
from .activations import (CELU, ELU, GELU, GLU, SELU, Hardshrink, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU,
                          LogSigmoid, LogSoftmax, Mish, PReLU, ReLU, ReLU6, Sigmoid, SiLU, Softmax, Softmin, Softplus,
                          Softshrink, Softsign, Tanh, Tanhshrink, Threshold)
from .attention import MultiheadAttention, TransformerBlock, causal_mask, scaled_dot_product_attention
from .containers import Sequential
from .distance import CosineSimilarity, PairwiseDistance, cosine_similarity, pairwise_distance
from .grad_scaler import GradScaler
from .layers import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, AvgPool3d, Conv1d, Conv2d, Conv3d,
                     ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, Dropout, Dropout1d, Dropout2d, Dropout3d,
                     Embedding, Flatten, Fold, Identity, Linear, MaxPool1d, MaxPool2d, MaxPool3d, PixelShuffle,
                     PixelUnshuffle, Unfold, Upsample)
from .loss_modules import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, GaussianNLLLoss, CosineEmbeddingLoss,
                           HingeEmbeddingLoss, HuberLoss, KLDivLoss, L1Loss, MarginRankingLoss, MSELoss,
                           MultiLabelSoftMarginLoss, NLLLoss, PoissonNLLLoss, SmoothL1Loss, SoftMarginLoss,
                           TripletMarginLoss)
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, cosine_embedding_loss,
                     gaussian_nll_loss, hinge_embedding_loss, huber_loss, kl_div, l1_loss, margin_ranking_loss,
                     mse_loss, multilabel_soft_margin_loss, nll_loss, poisson_nll_loss, smooth_l1_loss,
                     soft_margin_loss, triplet_margin_loss)
from .module import LoadResult, Module, StateDictError
from .norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm, RMSNorm
from .optim import SGD, Adam, AdamW, Optimizer, RMSprop, clip_grad_norm
from .recurrent import GRUCell, LSTMCell
from .schedules import CosineAnnealingLR, LinearLR, LRScheduler, StepLR

__all__ = [
    "Module", "StateDictError", "LoadResult", "init", "functional", "Sequential",
    "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Embedding",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "Upsample", "Dropout", "Flatten",
    "Identity", "interpolate", "scaled_dot_product_attention", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
    "PixelShuffle", "PixelUnshuffle", "Dropout1d", "Dropout2d", "Dropout3d", "Unfold", "Fold",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "RMSNorm", "GroupNorm",
    "MultiheadAttention", "TransformerBlock", "causal_mask", "GRUCell", "LSTMCell",
    "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "Softplus", "Softmax", "LogSoftmax",
    "Hardtanh", "ReLU6", "Hardsigmoid", "Hardswish", "SELU", "CELU", "Mish", "LogSigmoid", "Softsign", "Softmin",
    "Threshold", "Hardshrink", "Softshrink", "Tanhshrink", "GLU", "PReLU",
    "mse_loss", "l1_loss", "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "binary_cross_entropy",
    "smooth_l1_loss", "huber_loss", "kl_div",
    "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "SmoothL1Loss", "HuberLoss",
    "KLDivLoss", "cosine_similarity", "pairwise_distance", "CosineSimilarity", "PairwiseDistance",
    "margin_ranking_loss", "cosine_embedding_loss", "hinge_embedding_loss", "soft_margin_loss",
    "multilabel_soft_margin_loss",
    "triplet_margin_loss", "poisson_nll_loss", "gaussian_nll_loss",
    "MarginRankingLoss", "CosineEmbeddingLoss", "HingeEmbeddingLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss",
    "TripletMarginLoss", "PoissonNLLLoss", "GaussianNLLLoss",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "clip_grad_norm", "GradScaler",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR",
]
