"""A small model zoo for the cross-checks: tiny sizes, so a fake-tensor trace takes seconds on a CPU.

Each entry of ``ZOO`` builds ``(model, args)`` with fixed seeds.  The models cover what the
rules must handle: Linear (+bias), ReLU/GELU; strided / dilated / depthwise / transposed
convolutions, BatchNorm, pooling; a Llama (GQA, RoPE, causal SDPA); a GPT-2 (nn.MultiheadAttention
with a causal attn_mask, LayerNorm, GELU, biases, tied head); an encoder-decoder with cross
attention (Tq != Tk) through F.scaled_dot_product_attention and nn.MultiheadAttention.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402


# --------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """fc1 (input without grad) -> ReLU -> fc2 -> GELU -> fc3, all with biases."""

    def __init__(self, d_in=32, hidden=64, d_out=16):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


class UpDown(nn.Module):
    """x -> Linear(d, h) -> ReLU -> Linear(h, d), no biases: two matmuls of 2*M*d*h FLOPs for M rows."""

    def __init__(self, d=64, h=128):
        super().__init__()
        self.up, self.down = nn.Linear(d, h, bias=False), nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


# --------------------------------------------------------------------------- CNN


class CNN(nn.Module):
    """Conv1d stem over rows, then 2-D: strided, dilated, depthwise (groups=C), pointwise,
    transposed convs; BatchNorm2d; Max/Avg/AdaptiveAvg pooling; a Linear classifier."""

    def __init__(self, c=8, classes=10):
        super().__init__()
        self.stem1d = nn.Conv1d(3, 3, kernel_size=3, padding=1)
        self.conv_stride = nn.Conv2d(3, c, kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv_dilated = nn.Conv2d(c, c, kernel_size=3, padding=2, dilation=2)
        self.depthwise = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c)
        self.pointwise = nn.Conv2d(c, 2 * c, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.maxpool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(2 * c, c, kernel_size=2, stride=2)
        self.avgpool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):  # x: [B, 3, H, W]
        b, ch, h, w = x.shape
        # Conv1d along each image row: [B*H, C, W]
        rows = x.permute(0, 2, 1, 3).reshape(b * h, ch, w)
        x = x + self.stem1d(rows).reshape(b, h, ch, w).permute(0, 2, 1, 3)
        x = F.relu(self.bn1(self.conv_stride(x)))
        x = F.relu(self.conv_dilated(x))
        x = self.bn2(self.pointwise(F.relu(self.depthwise(x))))
        x = self.maxpool(F.relu(x))
        x = F.relu(self.up(x))
        x = self.avgpool(x)
        return self.fc(self.gap(x).flatten(1))


# --------------------------------------------------------------------------- GPT-2


class GPT2Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, vocab=97, d=32, heads=4, layers=2, max_seq=32, tied=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_seq, d)
        self.blocks = nn.ModuleList(GPT2Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.wte.weight
        # positions and the causal mask are buffers, not made in forward, and the mask is a float
        # (additive) one: analyze() cannot yet trace a forward that creates a tensor (torch.arange,
        # or nn.MultiheadAttention turning a bool mask into a float one); see
        # test_crosscheck.test_analyze_tensor_made_in_forward
        self.register_buffer("pos", torch.arange(max_seq), persistent=False)
        self.register_buffer("causal", torch.full((max_seq, max_seq), float("-inf")).triu(1), persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        mask = self.causal[:t, :t]  # additive: -inf above the diagonal
        x = self.wte(tokens) + self.wpe(self.pos[:t])
        for blk in self.blocks:
            x = blk(x, mask)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------- encoder-decoder


class SDPACrossAttention(nn.Module):
    """Multi-head cross attention through F.scaled_dot_product_attention (Tq != Tk)."""

    def __init__(self, d, heads):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)

    def forward(self, x, mem):
        b, tq, d = x.shape
        tk = mem.shape[1]
        q = self.q(x).view(b, tq, self.h, self.hd).transpose(1, 2)
        k, v = self.kv(mem).view(b, tk, 2, self.h, self.hd).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, tq, d))


class EncoderLayer(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, max_seq=32):
        super().__init__()
        self.register_buffer("causal", torch.full((max_seq, max_seq), float("-inf")).triu(1), persistent=False)
        self.ln1 = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.cross_sdpa = SDPACrossAttention(d, heads)
        self.ln3 = nn.LayerNorm(d)
        self.cross_mha = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln4 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))

    def forward(self, x, mem):
        t = x.shape[1]
        h = self.ln1(x)
        x = x + self.self_attn(h, h, h, attn_mask=self.causal[:t, :t], need_weights=False)[0]
        x = x + self.cross_sdpa(self.ln2(x), mem)
        h = self.ln3(x)
        x = x + self.cross_mha(h, mem, mem, need_weights=False)[0]
        return x + self.ff(self.ln4(x))


class EncoderDecoder(nn.Module):
    def __init__(self, vocab=83, d=32, heads=4, enc_layers=1, dec_layers=1):
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = nn.Embedding(vocab, d)
        self.encoder = nn.ModuleList(EncoderLayer(d, heads) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d, heads) for _ in range(dec_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, src, tgt):
        mem = self.src_embed(src)
        for layer in self.encoder:
            mem = layer(mem)
        x = self.tgt_embed(tgt)
        for layer in self.decoder:
            x = layer(x, mem)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------- the zoo


def make_mlp():
    torch.manual_seed(0)
    return MLP(), (torch.randn(4, 32),)


def make_cnn():
    torch.manual_seed(0)
    return CNN(), (torch.randn(2, 3, 16, 16),)


def make_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(dim=64, layers=2, heads=4, kv_heads=2, ffn=96, vocab=101, max_seq=32)
    return Llama(cfg), (torch.randint(0, cfg.vocab, (2, 16)),)


def make_gpt2():
    torch.manual_seed(0)
    return GPT2(tied=True), (torch.randint(0, 97, (2, 12)),)


def make_gpt2_untied():
    torch.manual_seed(0)
    return GPT2(tied=False, layers=1), (torch.randint(0, 97, (2, 12)),)


def make_encdec():
    torch.manual_seed(0)
    return EncoderDecoder(), (torch.randint(0, 83, (2, 20)), torch.randint(0, 83, (2, 12)))


ZOO = {
    "mlp": make_mlp,
    "cnn": make_cnn,
    "llama": make_llama,
    "gpt2_tied": make_gpt2,
    "gpt2_untied": make_gpt2_untied,
    "encdec": make_encdec,
}
