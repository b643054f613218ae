"""Named configurations. Each preset is a plain function returning a :class:`RunConfig`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from maskdiff.config import DataConfig, ModelConfig, ObjectiveConfig, RunConfig, TrainConfig
from maskdiff.data.images import FASHION_MNIST_DIR
from maskdiff.errors import MaskdiffError
from maskdiff.models import build_model


def tiny() -> RunConfig:
    """A character model (2 layers, width 128, 128 tokens) on the built-in corpus: about 5 minutes on a 2-core CPU."""
    # Tuned for the best bound in about 5 CPU minutes. At equal training FLOPs, fewer layers and more
    # steps won: 2 layers x 2000 steps 3.40 bits/char (2 seeds) against 4 layers x 1000 steps 3.77
    # (3 seeds), 3 x 1333 3.54, 4 layers of width 96 x 1778 3.73, 6 x 96 3.80, 2 x 192 3.73; lr 2e-3
    # did not help the 2-layer model. A 2-layer step costs 0.6x a 4-layer one on a CPU; 3000 steps
    # take about 5 minutes on 2 idle cores (1600 steps: 166 s, 3.67 bits/char). (README: "Worked example".)
    return RunConfig(
        preset="tiny",
        model=ModelConfig(n_layers=2, d_model=128, n_heads=4),
        objective=ObjectiveConfig("md4", schedule="linear"),
        data=DataConfig(seq_len=128),
        train=TrainConfig(steps=3000, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=750, checkpoint_every=750),
    )


def small() -> RunConfig:
    """A character model (6 layers, width 256, 256 tokens): the CPU benchmark size."""
    return RunConfig(
        preset="small",
        model=ModelConfig(n_layers=6, d_model=256, n_heads=4),
        objective=ObjectiveConfig("md4", schedule="linear"),
        data=DataConfig(seq_len=256),
        train=TrainConfig(steps=20_000, batch_size=32, lr=1e-3, warmup_steps=500, eval_every=1000, checkpoint_every=1000),
    )


def md4_training() -> TrainConfig:
    """MD4's training settings (text8 and OpenWebText): batch 512, AdamW 3e-4, EMA 0.9999, bf16."""
    return TrainConfig(
        steps=1_000_000,
        batch_size=512,
        lr=3e-4,
        warmup_steps=2000,
        weight_decay=0.03,
        ema_decay=0.9999,
        eval_every=10_000,
        checkpoint_every=10_000,
        precision="bf16",
    )


def text8() -> RunConfig:
    """MD4's text8 setting: 12 layers, width 768, 256 characters, batch 512 (needs a GPU and the text8 file)."""
    return RunConfig(
        preset="text8",
        model=ModelConfig(n_layers=12, d_model=768, n_heads=12, dropout=0.0),
        objective=ObjectiveConfig("md4", schedule="linear"),
        data=DataConfig(path="text8", seq_len=256, valid_fraction=0.05, test_fraction=0.05),
        train=md4_training(),
    )


def bpe_tiny() -> RunConfig:
    """GPT-2 tokens (4 layers, width 128, 128 tokens): minutes on a CPU (`maskdiff prepare --tokenizer gpt2 --data builtin`)."""
    # a 50k-token output layer dominates the cost at this width: batch 16 keeps a step near a second on 2 cores
    return RunConfig(
        preset="bpe-tiny",
        model=ModelConfig(n_layers=4, d_model=128, n_heads=4),
        objective=ObjectiveConfig("md4", schedule="linear"),
        data=DataConfig(format="tokens", seq_len=128),
        train=TrainConfig(steps=300, batch_size=16, lr=2e-3, warmup_steps=30, eval_every=100, eval_sequences=32, checkpoint_every=100, log_every=10),
    )


def md4(name: str, n_layers: int, d_model: int, n_heads: int, doc: str) -> Callable[[], RunConfig]:
    """MD4's OpenWebText setting at one size: GPT-2 tokens, 1024 per sequence, batch 512."""

    def preset() -> RunConfig:
        # the network and data follow the MD4 paper (GPT-2 small/medium shapes, 1024 tokens, batch 512, linear
        # schedule, no time conditioning); the optimiser values are our reading of its OpenWebText setting
        # (AdamW 3e-4, 2000 warm-up steps, EMA 0.9999, dropout 0.02): check them before relying on them
        return RunConfig(
            preset=name,
            model=ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, dropout=0.02),
            objective=ObjectiveConfig("md4", schedule="linear"),
            data=DataConfig(format="tokens", seq_len=1024),
            train=md4_training(),
        )

    preset.__doc__ = doc
    return preset


# SMDM's Diff_LLaMA_* configurations: (layers, width) -> heads (all multi-head, one query per key/value
# head); `maskdiff import smdm` reads the head count of a released checkpoint from here too
SMDM_HEADS = {
    (6, 256): 4, (8, 384): 6, (8, 512): 8, (9, 576): 9, (10, 640): 10, (13, 640): 10, (16, 640): 8,
    (12, 768): 12, (15, 768): 12, (18, 768): 12, (14, 896): 14, (16, 896): 14, (18, 896): 14,
    (16, 1024): 16, (18, 1024): 16, (20, 1024): 16, (18, 1280): 10, (21, 1280): 10, (24, 1280): 10,
    (18, 1408): 11, (21, 1408): 11, (24, 1408): 11, (19, 1536): 12, (22, 1536): 12, (25, 1536): 12,
    (20, 1792): 14, (24, 1792): 14, (22, 2048): 16, (25, 2048): 16, (28, 2176): 17,
}  # fmt: skip
# the presets' family: (layers, width) by non-embedding size 16 * layers * width^2
# (attention 4 d^2 and a SwiGLU MLP of hidden width 4d, 12 d^2, per layer)
SMDM_SIZES = {
    19: (8, 384),
    34: (8, 512),
    48: (9, 576),
    66: (10, 640),
    85: (13, 640),
    113: (12, 768),
    142: (15, 768),
    170: (18, 768),
    268: (16, 1024),
    336: (20, 1024),
    472: (18, 1280),
    1028: (20, 1792),
}
SMDM_BATCH, SMDM_SEQ_LEN, SMDM_TOKENS_PER_PARAMETER = 256, 2048, 20


def smdm(size: int) -> Callable[[], RunConfig]:
    """SMDM's masked diffusion model of about ``size`` million non-embedding parameters."""
    n_layers, d_model = SMDM_SIZES[size]
    n_heads = SMDM_HEADS[n_layers, d_model]
    # 20 training tokens per parameter (the compute-optimal ratio of autoregressive models; SMDM's
    # IsoFLOP runs vary it) in batches of 256 x 2048 tokens
    steps = max(1000, round(SMDM_TOKENS_PER_PARAMETER * size * 1e6 / (SMDM_BATCH * SMDM_SEQ_LEN)))

    def preset() -> RunConfig:
        # SMDM trains Llama-2-style networks (RMSNorm, SwiGLU, rotary) on SlimPajama with the Llama
        # tokenizer, 2048 tokens, batch 256, AdamW 4e-4 with cosine decay to 4e-5, weight decay 0.1,
        # beta2 0.95, grad clip 1 (TinyLlama's recipe); prepare any corpus with any tokenizer for it
        return RunConfig(
            preset=f"smdm-{size}m",
            model=ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, mlp="swiglu", norm="rmsnorm"),
            objective=ObjectiveConfig("md4", schedule="linear"),
            data=DataConfig(format="tokens", seq_len=SMDM_SEQ_LEN),
            train=TrainConfig(
                steps=steps,
                batch_size=SMDM_BATCH,
                lr=4e-4,
                min_lr_ratio=0.1,
                warmup_steps=min(2000, steps // 10),
                weight_decay=0.1,
                beta2=0.95,
                ema_decay=0.9999,
                eval_every=1000,
                checkpoint_every=1000,
                precision="bf16",
            ),
        )

    preset.__doc__ = (
        f"SMDM's Llama-shaped masked diffusion model, {size}M non-embedding parameters ({n_layers} layers, width {d_model}): "
        f"{SMDM_SEQ_LEN} tokens, batch {SMDM_BATCH}, {steps:,} steps (20 tokens per parameter)"
    )
    return preset


def genmd4(base: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    """The GenMD4 variant of a text preset: a learned schedule per token value, time-conditioned network."""

    def preset() -> RunConfig:
        cfg = base()
        cfg.preset = f"genmd4-{cfg.preset}"
        cfg.objective = ObjectiveConfig("genmd4", power_init=1.0, t1=1e-3)
        # with state-dependent masking the exact posterior depends on t, so the network sees it
        cfg.model.time_conditioning = True
        return cfg

    preset.__doc__ = f"{(base.__doc__ or '').split(':')[0]}, as GenMD4 (a learned schedule per token value)."
    return preset


def autoregressive(base: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    """The autoregressive twin of a text preset: the same network made causal, data and training
    (SMDM's baseline: same data, same network, next-token prediction)."""

    def preset() -> RunConfig:
        cfg = base()
        cfg.preset = f"ar-{cfg.preset}"
        cfg.objective = ObjectiveConfig("ar")
        cfg.model = ModelConfig(**{**vars(cfg.model), "causal": True})  # a text preset's model is a transformer
        return cfg

    preset.__doc__ = f"{(base.__doc__ or '').split(':')[0]}, as an autoregressive baseline (causal, exact likelihood, KV-cache sampling)."
    return preset


def image_tiny() -> RunConfig:
    """A small U-Net on 28x28 grey Fashion-MNIST (Debian's dataset-fashion-mnist): below 8 bits/dim in minutes on a CPU."""
    return RunConfig(
        preset="image-tiny",
        model=ModelConfig(architecture="unet", n_layers=2, d_model=32, n_heads=1, pixel_features=8, time_conditioning=False),
        objective=ObjectiveConfig("md4", schedule="linear"),
        data=DataConfig(format="idx", path=FASHION_MNIST_DIR, image_size=28, channels=1, seq_len=28 * 28, valid_fraction=0.02),
        train=TrainConfig(
            steps=500,
            batch_size=32,
            lr=2e-3,
            warmup_steps=50,
            ema_decay=0.99,
            eval_every=100,
            eval_sequences=64,
            checkpoint_every=250,
            precision="fp32",  # bf16 autocast makes CPU convolutions ~5x slower
        ),
    )


def cifar10() -> RunConfig:
    """MD4's CIFAR-10 setting: U-Net with 256 channels and 8 residual blocks at 32x32, dropout 0.1, linear schedule (GPU)."""
    # the network follows the MD4 paper; the optimiser settings are plausible defaults, not MD4's checked values
    return RunConfig(
        preset="cifar10",
        model=ModelConfig(
            architecture="unet",
            n_layers=8,
            d_model=256,
            n_heads=1,
            pixel_features=32,
            dropout=0.1,
            time_conditioning=True,
        ),
        objective=ObjectiveConfig("md4", schedule="linear"),
        data=DataConfig(format="cifar10", path="cifar-10-batches-py", image_size=32, channels=3, seq_len=32 * 32 * 3, valid_fraction=0.02),
        train=TrainConfig(
            steps=2_000_000,
            batch_size=128,
            lr=2e-4,
            warmup_steps=100,
            weight_decay=0.01,
            ema_decay=0.9999,
            eval_every=10_000,
            checkpoint_every=10_000,
            precision="bf16",
        ),
    )


def imagenet64() -> RunConfig:
    """MD4-style ImageNet 64x64: a U-ViT/DiT transformer over 4x4 patches, width 768, 12 blocks (GPU; downsampled-ImageNet npz)."""
    # sizes and optimiser settings are plausible defaults, not checked against MD4's released config
    return RunConfig(
        preset="imagenet64",
        model=ModelConfig(
            architecture="uvit",
            n_layers=12,
            d_model=768,
            n_heads=12,
            patch_size=4,
            pixel_features=16,
            time_conditioning=True,
        ),
        objective=ObjectiveConfig("md4", schedule="cosine"),
        data=DataConfig(format="npz", path="imagenet64", image_size=64, channels=3, seq_len=64 * 64 * 3, valid_fraction=0.01),
        train=TrainConfig(
            steps=2_000_000,
            batch_size=512,
            lr=2e-4,
            warmup_steps=2000,
            weight_decay=0.03,
            ema_decay=0.9999,
            eval_every=10_000,
            checkpoint_every=10_000,
            precision="bf16",
        ),
    )


TEXT_PRESETS: dict[str, Callable[[], RunConfig]] = {"tiny": tiny, "small": small, "text8": text8}
# presets on prepared token shards (data.format=tokens; data.path is the user's prepared folder)
TOKEN_PRESETS: dict[str, Callable[[], RunConfig]] = {
    "bpe-tiny": bpe_tiny,
    "md4-small": md4("md4-small", 12, 768, 12, "MD4-S on OpenWebText-like data: GPT-2 tokens, 12 layers, width 768, 1024 tokens, batch 512 (GPU)"),
    "md4-medium": md4("md4-medium", 24, 1024, 16, "MD4-M: GPT-2 tokens, 24 layers, width 1024, 1024 tokens, batch 512 (GPUs)"),
    **{f"smdm-{size}m": smdm(size) for size in SMDM_SIZES},
}
PRESETS: dict[str, Callable[[], RunConfig]] = {
    **TEXT_PRESETS,
    **{f"genmd4-{name}": genmd4(fn) for name, fn in TEXT_PRESETS.items()},
    **{f"ar-{name}": autoregressive(fn) for name, fn in TEXT_PRESETS.items()},
    **TOKEN_PRESETS,
    **{f"ar-{name}": autoregressive(fn) for name, fn in TOKEN_PRESETS.items()},
    "image-tiny": image_tiny,
    "cifar10": cifar10,
    "imagenet64": imagenet64,
}


def parameter_count(cfg: RunConfig, vocab_size: int | None = None) -> int:
    """Parameters of a config's network without its input embedding (as training reports them, and
    as scaling laws count N), counted on the meta device (nothing is allocated); ``vocab_size``
    defaults to the built-in corpus's characters for text models, the prepared folder's vocabulary
    for token models (GPT-2's until it is prepared) and 256 intensities for images."""
    vocab = vocab_size if vocab_size is not None else cfg.data.data_format.vocab_size(cfg.data)
    with torch.device("meta"):
        return build_model(cfg, vocab).num_parameters()


def get_preset(name: str) -> RunConfig:
    """The config of preset ``name``."""
    if name not in PRESETS:
        raise MaskdiffError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]()
