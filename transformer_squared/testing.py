"""Tiny random-initialised models of several architectures, for tests and examples (no download needed)."""

from __future__ import annotations

import torch

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "gpt2", "phi", "llava")


def tiny_config(arch: str):
    """A transformers config of `arch` small enough to build in milliseconds (hidden 32-64, 2 layers)."""
    import transformers as tf

    common = dict(vocab_size=128, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "gemma":
        return tf.GemmaConfig(**common, head_dim=12)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=128, n_embd=48, n_layer=2, n_head=4, n_positions=256,
                             bos_token_id=1, eos_token_id=2)
    if arch == "phi":
        return tf.PhiConfig(vocab_size=128, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    if arch == "llava":
        text = tf.LlamaConfig(**common)
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=16, patch_size=8)
        return tf.LlavaConfig(text_config=text, vision_config=vision, image_token_index=127)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random-initialised causal LM (LLaVA: the full vision-language model) in eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tiny_config(arch)
    if arch == "llava":
        model = tf.LlavaForConditionalGeneration(config)
    else:
        model = tf.AutoModelForCausalLM.from_config(config)
    # Random init leaves the weights near zero in some archs; widen them so logits differ per token.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model.to(dtype).eval()


def tiny_chat_model(tokenizer, seed: int = 0):
    """A tiny random Llama over a real tokenizer's vocabulary: real chat templates, millisecond forwards."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            tie_word_embeddings=True)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model.eval()
