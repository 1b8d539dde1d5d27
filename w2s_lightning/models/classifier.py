"""Backbone + linear head: the binary classifier both slots use."""

from __future__ import annotations

import torch
from torch import nn

from w2s_lightning.models.backbone import load_backbone, load_config

POOLINGS = ("last", "mean", "cls")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool with the attention mask, never by counting non-zero ids (id 0 is a real token
    in many vocabularies). Works for left or right padding."""
    if mode == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if mode == "cls":
        return hidden[:, 0]
    raise ValueError(f"pooling '{mode}' is not one of {POOLINGS}; fix: set the model's pooling")


def is_decoder(config) -> bool:
    """A causal language model by its config: its last real token has read the whole text."""
    return (
        bool(getattr(config, "is_decoder", False))
        or any(arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel") for arch in (config.architectures or []))
        or config.model_type in {"gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "mistral", "gemma", "phi"}
    )


def resolve_pooling(spec, config) -> str:
    """`auto`: decoders pool their last real token, encoders their first ([CLS]) token."""
    if spec.pooling != "auto":
        return spec.pooling
    return "last" if is_decoder(config) else "cls"


class Encoder(nn.Module):
    """A backbone and its pooling: one feature vector per text. Holds no head, so building one
    draws nothing from the random generators unless the backbone's weights are random."""

    def __init__(self, spec, config=None):
        super().__init__()
        config = config or load_config(spec)
        self.pooling = resolve_pooling(spec, config)
        self.backbone = load_backbone(spec, config)
        # from_pretrained returns a model in eval mode and Lightning keeps submodule modes as
        # found; in eval mode Hugging Face silently skips gradient checkpointing.
        self.backbone.train()
        if spec.compile:
            # Traced at the first call, so adapters and checkpointing added below are compiled too.
            self.backbone.compile()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


class Classifier(Encoder):
    """An encoder and a linear head on its pooled features: p(label) for one text."""

    def __init__(self, spec):
        config = load_config(spec)
        super().__init__(spec, config)
        self.head = new_head(spec, config)
        if spec.linear_probe:
            self.backbone.requires_grad_(False)
        if spec.lora.enabled and not spec.linear_probe:
            self.backbone = apply_lora(self.backbone, spec.lora)
        if spec.gradient_checkpointing:
            # Non-reentrant checkpointing works with frozen embeddings and keeps dropout as configured.
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, input_ids=None, attention_mask=None, features=None) -> torch.Tensor:
        """Logits from token ids, or from precomputed pooled `features`."""
        if features is None:
            features = self.pooled(input_ids, attention_mask)
        return head_logits(self.head, features)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changed: the head, plus adapters under LoRA or everything under
        full finetuning."""
        return trainable_state(self)


class ProbeHead(nn.Module):
    """What a linear probe's stage trains and holds: the head, on its frozen encoder's pooled
    features, which come computed or from the cache before training starts (stages.Inputs). A
    stage whose features are all cached never loads the encoder. Its weights are named as a
    Classifier's head, and drawn the same as one whose backbone's weights are loaded."""

    def __init__(self, spec):
        super().__init__()
        self.head = new_head(spec, load_config(spec))

    def forward(self, features: torch.Tensor, **unused) -> torch.Tensor:
        return head_logits(self.head, features)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self)


def new_head(spec, config) -> nn.Linear:
    head = nn.Linear(config.get_text_config().hidden_size, 2)
    # Zero init (std 0) starts every model at p = 0.5, so the first steps only see the labels.
    nn.init.normal_(head.weight, std=spec.head_init_std)
    nn.init.zeros_(head.bias)
    return head


def head_logits(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    # The head and its logits in the head's own precision (float32 unless the whole model was
    # cast): under mixed precision autocast would otherwise run them in bf16.
    with torch.autocast(device_type=features.device.type, enabled=False):
        return head(features.to(head.weight.dtype))


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu() for n, t in module.state_dict().items() if n in names}


def apply_lora(backbone: nn.Module, lora) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if list(lora.target_modules) != ["all-linear"] else "all-linear",
    )
    return get_peft_model(backbone, config)
