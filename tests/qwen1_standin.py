"""A stand-in for Qwen 1 (``Qwen/Qwen-1_8B-Chat``), whose modelling code is remote and cannot be fetched here.

It follows the published ``modeling_qwen.py`` layout and names: ``QWenLMHeadModel.transformer`` (the
``base_model_prefix``) is a ``QWenModel`` with ``wte``, ``h[i]`` blocks of ``ln_1``, ``attn`` (``c_attn``
fused QKV with bias, ``c_proj``), ``ln_2``, ``mlp`` (``w1``, ``w2`` of width ``intermediate_size // 2``,
``c_proj``; ``w1(x) * silu(w2(x))``), then ``ln_f``; ``output_hidden_states`` holds every block's input and
``ln_f`` of the last output. Random weights; rotary embeddings are left out (they do not move any site).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast


class QWenConfig(PretrainedConfig):
    """The published config's fields (defaults: Qwen-1_8B-Chat's config.json)."""

    model_type = "qwen"

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        intermediate_size: int = 11008,
        kv_channels: int = 128,
        layer_norm_epsilon: float = 1e-6,
        max_position_embeddings: int = 8192,
        no_bias: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.kv_channels = kv_channels
        self.layer_norm_epsilon = layer_norm_epsilon
        self.max_position_embeddings = max_position_embeddings
        self.no_bias = no_bias
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        projection = config.kv_channels * config.num_attention_heads
        self.c_attn = nn.Linear(config.hidden_size, 3 * projection)
        self.c_proj = nn.Linear(projection, config.hidden_size, bias=not config.no_bias)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        batch, length, _ = hidden_states.shape
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.c_attn(hidden_states).chunk(3, dim=-1))
        context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return (self.c_proj(context.transpose(1, 2).reshape(batch, length, -1)), None)


class QWenMLP(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        width = config.intermediate_size // 2
        self.w1 = nn.Linear(config.hidden_size, width, bias=not config.no_bias)
        self.w2 = nn.Linear(config.hidden_size, width, bias=not config.no_bias)
        self.c_proj = nn.Linear(width, config.hidden_size, bias=not config.no_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.w1(hidden_states) * nn.functional.silu(self.w2(hidden_states)))


class QWenBlock(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = QWenAttention(config)
        self.ln_2 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        layernorm_input = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask)[0] + hidden_states
        return (layernorm_input + self.mlp(self.ln_2(layernorm_input)),)


class QWenPreTrainedModel(PreTrainedModel):
    config_class = QWenConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)


class QWenModel(QWenPreTrainedModel):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(QWenBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, use_cache=None, **kwargs):
        hidden_states = self.wte(input_ids)
        length = input_ids.shape[1]
        mask = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        everything = []
        for block in self.h:
            everything.append(hidden_states)
            hidden_states = block(hidden_states, attention_mask=mask)[0]
        hidden_states = self.ln_f(hidden_states)
        everything.append(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, hidden_states=tuple(everything) if output_hidden_states else None)


class QWenLMHeadModel(QWenPreTrainedModel):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, **kwargs):
        return self.lm_head(self.transformer(input_ids, **kwargs).last_hidden_state)
