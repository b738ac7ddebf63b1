"""The LLB network: backbone, adapters, label generator, the two branches, fusion and decoder, wired together.

Per frame: F gives layer1..4; two 3x3 adapters map the stride-16 feature to C channels, the learner's copy with
the size-averaged L2 normalisation of the official code. The induction branch applies the fitted target model
(E2* = T_tau(x)), the transduction branch retrieves E1* from memory, the fusion combines them into E_tar and the
decoder turns E_tar into a full-resolution logit map. `forward` runs the paper's training mini-sequence;
inference drives the same pieces frame by frame (llb.inference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbone import build_backbone
from .config import ModelConfig
from .decoder import SegmentationDecoder
from .fusion import build_fusion
from .induction import FewShotLearner, LearnerMemory, apply_filter
from .label_generator import LabelEncoding, LabelGenerator
from .transduction import Transduction


def _untimed(name: str) -> AbstractContextManager[object]:
    return nullcontext()


class SizeAveragedL2Norm(nn.Module):
    """y = x * scale * sqrt(C h w / (sum_{C,h,w} x^2 + eps)) per sample: RMS of y equals `scale`."""

    def __init__(self, scale: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = scale
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        numel = x.shape[1] * x.shape[2] * x.shape[3]
        sq = x.square().sum(dim=(1, 2, 3), keepdim=True)
        return x * (self.scale * torch.sqrt(numel / (sq + self.eps)))


@dataclass
class FrameFeatures:
    """Backbone features of B images: layers {layer1..4}; learner x and transduction features (B, C, h, w)."""

    layers: dict[str, Tensor]
    learner: Tensor
    transduction: Tensor


@dataclass
class SegmentOutput:
    """Result for B images: logits (B, 1, H, W), E1*, E2* and E_tar (B, D, h, w)."""

    logits: Tensor
    e1_star: Tensor
    e2_star: Tensor
    e_tar: Tensor


@dataclass
class SequenceOutput:
    """Training mini-sequence: logits (Nte, B, 1, H, W); E1, E2 of every frame (Ntr + Nte, B, D, h, w)."""

    logits: Tensor
    e1: Tensor
    e2: Tensor


class LLBNet(nn.Module):
    """LLB (adaptive fusion, DLGM) or the JOINT baseline (sum fusion, mask CNN), chosen by the config."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trained = False  # set by the checkpoint loader; an untrained network's output is never a result
        c, d = cfg.feature_dim, cfg.label.dim
        self.backbone = build_backbone(cfg.backbone)
        feat_ch = self.backbone.channels[cfg.feature_layer]
        k = cfg.induction.filter_size
        self.learner_adapter = nn.Conv2d(feat_ch, c, 3, padding=1, bias=False)
        self.learner_norm = SizeAveragedL2Norm(math.sqrt(1.0 / (c * k * k)))
        self.transduction_adapter = nn.Conv2d(feat_ch, c, 3, padding=1, bias=False)
        self.label_generator = LabelGenerator(cfg.label)
        self.learner = FewShotLearner(cfg.induction, c, d)
        self.transduction = Transduction(cfg.transduction, c)
        self.fusion = build_fusion(cfg.fusion, d)
        self.decoder = SegmentationDecoder(cfg.decoder, d, self.backbone.channels)

    def normalize(self, rgb: Tensor) -> Tensor:
        """Float RGB 0..255 (B, 3, H, W) -> the backbone's input; the BFF is built from the same tensor."""
        return self.backbone.normalize(rgb)

    def extract(self, image: Tensor) -> FrameFeatures:
        """Normalised images (B, 3, H, W) -> FrameFeatures (h, w = H/16, W/16)."""
        layers = self.backbone(image)
        feat = layers[self.cfg.feature_layer]
        return FrameFeatures(
            layers=layers,
            learner=self.learner_norm(self.learner_adapter(feat)),
            transduction=self.transduction_adapter(feat),
        )

    def encode_label(self, image: Tensor, mask: Tensor) -> LabelEncoding:
        """G on normalised images (B, 3, H, W) and soft masks (B, 1, H, W)."""
        return self.label_generator(image, mask)

    def segment(
        self,
        feats: FrameFeatures,
        tau: Tensor,
        mem_keys: Tensor,
        mem_e1: Tensor,
        image_size: tuple[int, int],
        stage: Callable[[str], AbstractContextManager[object]] = _untimed,
    ) -> SegmentOutput:
        """One frame for B targets: target model tau (B, D, C, K, K), encoded memory keys (B, N*h*w, key_dim)
        and memory E1 (N, B, D, h, w) or its tokens (B, N*h*w, D) -> SegmentOutput. `stage(name)` wraps each
        part (for timing)."""
        with stage("learner"):
            e2_star = apply_filter(feats.learner[None], tau)[0]
        with stage("transduction"):
            e1_star = self.transduction(feats.transduction, mem_keys, mem_e1)
        with stage("fusion"):
            e_tar = self.fusion(e1_star, e2_star)
        with stage("decoder"):
            logits = self.decoder(e_tar, feats.layers, image_size)
        return SegmentOutput(logits=logits, e1_star=e1_star, e2_star=e2_star, e_tar=e_tar)

    def forward(
        self,
        train_images: Tensor,
        train_masks: Tensor,
        test_images: Tensor,
        num_init_iter: int | None = None,
        num_update_iter: int | None = None,
    ) -> SequenceOutput:
        """The paper's training mini-sequence.

        train_images (Ntr, B, 3, H, W) normalised, train_masks (Ntr, B, 1, H, W), test_images (Nte, B, 3, H, W).
        Memory starts with the train frames; tau0 takes `num_init_iter` steps from zero; each test frame is
        segmented, joins the memory with its predicted (detached) soft mask, and tau takes `num_update_iter`
        steps before the next frame.
        """
        icfg = self.cfg.induction
        num_init_iter = icfg.train_init_iters if num_init_iter is None else num_init_iter
        num_update_iter = icfg.train_update_iters if num_update_iter is None else num_update_iter
        ntr, b = train_images.shape[:2]
        nte = test_images.shape[0]
        size = (train_images.shape[-2], train_images.shape[-1])
        all_feats = self.extract(torch.cat([train_images, test_images]).flatten(0, 1))

        def frames(x: Tensor) -> Tensor:
            return x.unflatten(0, (ntr + nte, b))

        learner_feat, trans_feat = frames(all_feats.learner), frames(all_feats.transduction)
        layers = {name: frames(x) for name, x in all_feats.layers.items()}
        enc = self.encode_label(train_images.flatten(0, 1), train_masks.flatten(0, 1))
        e1s, e2s, ws = (
            [enc.e1.unflatten(0, (ntr, b))],
            [enc.e2.unflatten(0, (ntr, b))],
            [enc.weight.unflatten(0, (ntr, b))],
        )
        n_mem = ntr
        tau = self._learn(learner_feat[:n_mem], e2s, ws, num_init_iter)
        logits = []
        for i in range(nte):
            t = ntr + i
            feats = FrameFeatures({k: v[t] for k, v in layers.items()}, learner_feat[t], trans_feat[t])
            keys = self.transduction.encode_memory(trans_feat[:n_mem])
            out = self.segment(feats, tau, keys, torch.cat(e1s), size)
            logits.append(out.logits)
            enc = self.encode_label(test_images[i], torch.sigmoid(out.logits).detach())
            e1s.append(enc.e1[None])
            e2s.append(enc.e2[None])
            ws.append(enc.weight[None])
            n_mem += 1
            if i < nte - 1:
                tau = self._learn(learner_feat[:n_mem], e2s, ws, num_update_iter, tau)
        return SequenceOutput(logits=torch.stack(logits), e1=torch.cat(e1s), e2=torch.cat(e2s))

    def _learn(
        self, feat: Tensor, e2s: list[Tensor], ws: list[Tensor], iters: int, tau: Tensor | None = None
    ) -> Tensor:
        """Steepest-descent steps of the few-shot learner on the memory (feat (N, B, C, h, w), E2 and W of each
        memory frame), in float32 even under bf16 autocast, as at inference: its Gauss-Newton step sizes are
        ratios of small sums that bf16 would round away."""
        with torch.autocast(feat.device.type, enabled=False):
            memory = LearnerMemory(feat.float(), torch.cat(e2s).float(), torch.cat(ws).float())
            tau, _ = self.learner(memory, iters, tau)
        return tau
