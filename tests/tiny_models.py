"""Tiny test inputs, imported by name (`from tiny_models import CORPUS, make_backbone`): a few lines of text, a
byte-level BPE tokenizer trained on them in memory, and tiny random backbones of several families. The pytest
fixtures built from them are in conftest.py."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a "
    "wife.",
    "Question: what is the passkey? Answer: the passkey is 12345. Numbers 0 1 2 3 4 5 6 7 8 9.",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE like SmolLM2's (offsets, leading-space tokens, ChatML specials), trained on a few lines."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "opt")


def make_backbone(family: str = "llama", vocab_size: int = 400, seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of the given family (d = 32, 2 layers)."""
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 max_position_embeddings=1024))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                                                   bos_token_id=0, eos_token_id=0))
    elif family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=vocab_size, hidden_size=32, word_embed_proj_dim=16, ffn_dim=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=1024))
    else:
        raise ValueError(family)
    return model.eval()


def save_tiny_adapter(folder, seed: int = 1, backbone_seed: int = 0) -> torch.nn.Module:
    """A tiny llama (make_backbone's, `backbone_seed`) with an answer adapter on its second layer whose B matrices
    are random, so that switching it on changes the output; saved to `folder`, and returned."""
    from hmt_core.answer import NOT_FOUND
    from hmt_core.answer_adapter import add_answer_lora, save_answer_adapter
    from hmt_core.training.lora import linear_layer_names

    trained = make_backbone("llama", seed=backbone_seed)
    targets = linear_layer_names(trained)
    add_answer_lora(trained, 4, 8.0, 0.0, targets, [1])
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_answer_adapter(trained, folder, {"prompt": "Answer short.", "not_found": NOT_FOUND,
                                          "training": {"examples": 3},
                                          "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": targets,
                                                   "layers": [1]}})
    return trained


def tiny_bert() -> BertModel:
    """A tiny random sentence encoder (d = 32, 2 layers) over the test tokenizer's 400 ids, as the evidence's
    sentence embedder (hmt_core.embedder) wraps all-MiniLM-L6-v2."""
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128))
