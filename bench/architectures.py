"""Width and depth of the catalogue's hub models, so `--random-init` builds each at its real
size without downloading its config. The vocabulary becomes MiniLM's (30522 tokens), so
embedding tables are smaller than the real models'; every other weight matrix is the same."""

from __future__ import annotations


def gpt2(layers: int, width: int, heads: int) -> dict:
    return {"model_type": "gpt2", "n_layer": layers, "n_embd": width, "n_head": heads}


def pythia(layers: int, width: int, heads: int) -> dict:
    return {
        "model_type": "gpt_neox",
        "num_hidden_layers": layers,
        "hidden_size": width,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
    }


def decoder(model_type: str, layers: int, width: int, heads: int, kv_heads: int, ffn: int) -> dict:
    """Llama-style blocks: grouped-query attention and a gated MLP."""
    return {
        "model_type": model_type,
        "num_hidden_layers": layers,
        "hidden_size": width,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": ffn,
    }


ARCHITECTURES = {
    "gpt2": gpt2(12, 768, 12),
    "gpt2_medium": gpt2(24, 1024, 16),
    "gpt2_large": gpt2(36, 1280, 20),
    "gpt2_xl": gpt2(48, 1600, 25),
    "pythia_70m": pythia(6, 512, 8),
    "pythia_160m": pythia(12, 768, 12),
    "pythia_410m": pythia(24, 1024, 16),
    "pythia_1b": pythia(16, 2048, 8),
    "pythia_1_4b": pythia(24, 2048, 16),
    "pythia_2_8b": pythia(32, 2560, 32),
    "pythia_6_9b": pythia(32, 4096, 32),
    "pythia_12b": pythia(36, 5120, 40),
    "qwen2_5_0_5b": decoder("qwen2", 24, 896, 14, 2, 4864),
    "qwen2_5_1_5b": decoder("qwen2", 28, 1536, 12, 2, 8960),
    "qwen2_5_3b": decoder("qwen2", 36, 2048, 16, 2, 11008),
    "qwen2_5_7b": decoder("qwen2", 28, 3584, 28, 4, 18944),
    "qwen2_5_14b": decoder("qwen2", 48, 5120, 40, 8, 13824),
    "qwen2_5_32b": decoder("qwen2", 64, 5120, 40, 8, 27648),
    "qwen2_5_72b": decoder("qwen2", 80, 8192, 64, 8, 29568),
    "llama3_8b": decoder("llama", 32, 4096, 32, 8, 14336),
    "llama3_70b": decoder("llama", 80, 8192, 64, 8, 28672),
}
