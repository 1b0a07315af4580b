"""The general-graph workloads (W9, W10): torch modules grurt runs as a general tensor graph
(``grurt.from_torch(module, example)``), built once with random weights (fixed seed) and shared
by ``compare_graph.py``, ``test_bench.py`` and tests/test_tensor_models_w10.py.

    W9   attention pooling   BiGRU(128) -> softmax(Linear(256 -> 1)) weights over time
                             -> weighted sum -> Linear(256 -> 12)          x (1, 100, 40)
    W10  DeepFilterNet-style encoder + ERB decoder + DF decoder (DeepFilterNet3's layout,
         its real widths: 32 ERB bands, 96 DF bins, 64 conv channels, GRUs of 256, order-5
         deep filter), one call per hop of S frames with every state carried:
         W10 (S = 1: one 10 ms hop per call) and W10s20 (S = 20)

W10 follows ``df/deepfilternet3.py`` and ``df/modules.py`` of Rikorose/DeepFilterNet:

* encoder: the ERB features (B, 1, S, 32) through four ``Conv2dNormAct`` (Conv2d over (time,
  frequency), separable: depthwise then 1x1, BatchNorm, ReLU; frequency strides 1, 2, 2, 1),
  the complex features (B, 2, S, 96) through two (strides 1, 2); the DF path flattened into a
  grouped linear (``GroupedLinearEinsum``, ``torch.einsum``) added to the ERB embedding, then
  a ``SqueezedGRU`` (grouped linear, GRU(256), h0 in, h_n out) and the local-SNR head;
* ERB decoder: a two-layer SqueezedGRU to 64 x 8 channels, then 1x1 pathway convs added to
  the encoder's maps and ``ConvTranspose2d`` upsampling frequency by 2 twice, a sigmoid mask
  (B, 1, S, 32);
* DF decoder: a two-layer SqueezedGRU, a grouped linear to 96 x 10 coefficients (tanh), added
  to a (5, 1) pathway conv of the DF path's first map; alpha from Linear(256 -> 1) + sigmoid.

Causal time padding: a conv with k > 1 frames in time reads the last k - 1 frames of its input
from the previous call (a state in, the new frames out), so that calls of S frames compute what
one call on the whole sequence computes; at the first call the history is zeros, which is
DeepFilterNet's causal zero padding. States carried: the three frame histories and the GRUs'
h (1 + 2 + 2 layers of 256).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

import grurt

SEED = 20261206
NAMES = ("W9", "W10", "W10s20")


# ---- W9 ----

class AttentionPooling(nn.Module):
    """BiGRU, attention pooling over time, a classifier."""

    def __init__(self, features=40, hidden=128, classes=12):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * hidden, 1)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        w = torch.softmax(self.score(out), dim=1)        # (B, T, 1)
        return self.head((out * w).sum(1))


# ---- W10: DeepFilterNet3's modules ----

class GroupedLinearEinsum(nn.Module):
    """DeepFilterNet's grouped linear: (..., G·I) -> (..., G·O), one (I, O) matrix per group, an einsum."""

    def __init__(self, input_size, hidden_size, groups):
        super().__init__()
        self.groups, self.ws = groups, input_size // groups
        self.weight = nn.Parameter(torch.randn(groups, input_size // groups, hidden_size // groups)
                                   / np.sqrt(input_size // groups))

    def forward(self, x):
        x = x.unflatten(-1, (self.groups, self.ws))
        return torch.einsum("...gi,gih->...gh", x, self.weight).flatten(-2)


class ConvNormAct(nn.Module):
    """DeepFilterNet's ``Conv2dNormAct`` / ``ConvTranspose2dNormAct`` over (B, C, T, F): a kernel of
    (kt, kf), a frequency stride, separable (grouped conv + 1x1 conv) when the channels allow it,
    BatchNorm2d, an activation. The causal time padding of kt - 1 frames is the ``history`` the
    caller puts in front of the input (see the module's text)."""

    def __init__(self, cin, cout, kernel=(1, 3), fstride=1, transposed=False, act=nn.ReLU):
        super().__init__()
        kt, kf = kernel
        groups = min(cin, cout)
        if cin % groups or cout % groups or kernel == (1, 1):
            groups = 1
        fpad = kf // 2
        if transposed:
            self.conv = nn.ConvTranspose2d(cin, cout, kernel, stride=(1, fstride), padding=(kt - 1, fpad),
                                           output_padding=(0, fpad if fstride > 1 else 0), groups=groups, bias=False)
        else:
            self.conv = nn.Conv2d(cin, cout, kernel, stride=(1, fstride), padding=(0, fpad), groups=groups, bias=False)
        self.pointwise = nn.Conv2d(cout, cout, 1, bias=False) if groups > 1 else nn.Identity()
        self.norm = nn.BatchNorm2d(cout)
        self.act = act()
        self.history = kt - 1

    def forward(self, x):
        return self.act(self.norm(self.pointwise(self.conv(x))))


class SqueezedGRU(nn.Module):
    """DeepFilterNet3's ``SqueezedGRU_S``: grouped linear + ReLU in, GRU, optional grouped linear + ReLU out,
    optional skip (the input of the GRU added to its output)."""

    def __init__(self, input_size, hidden, output_size=None, layers=1, groups=16, skip=False):
        super().__init__()
        self.linear_in = nn.Sequential(GroupedLinearEinsum(input_size, hidden, groups), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.linear_out = (nn.Sequential(GroupedLinearEinsum(hidden, output_size, groups), nn.ReLU())
                           if output_size else nn.Identity())
        self.skip = skip

    def forward(self, x, h):
        x = self.linear_in(x)
        y, h = self.gru(x, h)
        y = self.linear_out(y)
        return (y + x if self.skip else y), h


def _causal(conv: ConvNormAct, x, history):
    """``conv`` on ``history`` (B, C, kt - 1, F) followed by ``x`` (B, C, S, F): S frames out, and the
    last kt - 1 frames of the input as the next call's history."""
    full = torch.cat((history, x), 2)
    return conv(full), full[:, :, full.shape[2] - conv.history:]


class DeepFilterNetStep(nn.Module):
    """Encoder + ERB decoder + DF decoder of DeepFilterNet3, S frames per call, every state carried.

    In: ``feat_erb`` (B, 1, S, 32), ``feat_spec`` (B, 2, S, 96), the histories ``erb_hist`` (B, 1, 2, 32),
    ``spec_hist`` (B, 2, 2, 96), ``c0_hist`` (B, 64, 4, 96), the GRU states ``h_enc`` (1, B, 256),
    ``h_erb`` (2, B, 256), ``h_df`` (2, B, 256). Out: the ERB mask (B, 1, S, 32), the DF
    coefficients (B, S, 96, 10), alpha (B, S, 1), the local SNR (B, S, 1), then the new histories
    and states in the order they came in.
    """

    def __init__(self, erb=32, df=96, ch=64, emb=256, df_hidden=256, order=5, lin_groups=16, enc_groups=32,
                 pathway_kt=5):
        super().__init__()
        self.erb_conv0 = ConvNormAct(1, ch, (3, 3))
        self.erb_conv1 = ConvNormAct(ch, ch, fstride=2)
        self.erb_conv2 = ConvNormAct(ch, ch, fstride=2)
        self.erb_conv3 = ConvNormAct(ch, ch)
        self.df_conv0 = ConvNormAct(2, ch, (3, 3))
        self.df_conv1 = ConvNormAct(ch, ch, fstride=2)
        self.df_fc_emb = nn.Sequential(GroupedLinearEinsum(ch * df // 2, ch * erb // 4, enc_groups), nn.ReLU())
        self.enc_gru = SqueezedGRU(ch * erb // 4, emb, groups=lin_groups)
        self.lsnr_fc = nn.Sequential(nn.Linear(emb, 1), nn.Sigmoid())
        self.lsnr_scale, self.lsnr_offset = 35.0 - -15.0, -15.0
        # ERB decoder
        self.erb_gru = SqueezedGRU(emb, emb, output_size=ch * erb // 4, layers=2, groups=lin_groups, skip=False)
        self.conv3p = ConvNormAct(ch, ch, (1, 1))
        self.convt3 = ConvNormAct(ch, ch)
        self.conv2p = ConvNormAct(ch, ch, (1, 1))
        self.convt2 = ConvNormAct(ch, ch, fstride=2, transposed=True)
        self.conv1p = ConvNormAct(ch, ch, (1, 1))
        self.convt1 = ConvNormAct(ch, ch, fstride=2, transposed=True)
        self.conv0p = ConvNormAct(ch, ch, (1, 1))
        self.conv0_out = ConvNormAct(ch, 1, act=nn.Sigmoid)
        # DF decoder
        self.df_out_ch = 2 * order
        self.df_convp = ConvNormAct(ch, self.df_out_ch, (pathway_kt, 1))
        self.df_gru = SqueezedGRU(emb, df_hidden, layers=2, groups=lin_groups, skip=True)
        self.df_out = nn.Sequential(GroupedLinearEinsum(df_hidden, df * self.df_out_ch, lin_groups), nn.Tanh())
        self.df_fc_a = nn.Sequential(nn.Linear(df_hidden, 1), nn.Sigmoid())
        self.df_bins = df

    def forward(self, feat_erb, feat_spec, erb_hist, spec_hist, c0_hist, h_enc, h_erb, h_df):
        # encoder
        e0, erb_hist = _causal(self.erb_conv0, feat_erb, erb_hist)      # (B, C, S, 32)
        e1 = self.erb_conv1(e0)                                          # (B, C, S, 16)
        e2 = self.erb_conv2(e1)                                          # (B, C, S, 8)
        e3 = self.erb_conv3(e2)                                          # (B, C, S, 8)
        c0, spec_hist = _causal(self.df_conv0, feat_spec, spec_hist)    # (B, C, S, 96)
        c1 = self.df_conv1(c0)                                           # (B, C, S, 48)
        cemb = self.df_fc_emb(c1.permute(0, 2, 3, 1).flatten(2))         # (B, S, C·8)
        emb = e3.permute(0, 2, 3, 1).flatten(2) + cemb
        emb, h_enc = self.enc_gru(emb, h_enc)                            # (B, S, 256)
        lsnr = self.lsnr_fc(emb) * self.lsnr_scale + self.lsnr_offset
        # ERB decoder
        b, _, s, f8 = e3.shape
        d, h_erb = self.erb_gru(emb, h_erb)
        d = d.view(b, s, f8, -1).permute(0, 3, 1, 2)                     # (B, C, S, 8)
        d = self.convt3(self.conv3p(e3) + d)
        d = self.convt2(self.conv2p(e2) + d)                             # (B, C, S, 16)
        d = self.convt1(self.conv1p(e1) + d)                             # (B, C, S, 32)
        m = self.conv0_out(self.conv0p(e0) + d)                          # (B, 1, S, 32)
        # DF decoder
        c, h_df = self.df_gru(emb, h_df)
        p, c0_hist = _causal(self.df_convp, c0, c0_hist)
        alpha = self.df_fc_a(c)
        coefs = self.df_out(c).view(b, s, self.df_bins, self.df_out_ch) + p.permute(0, 2, 3, 1)
        return m, coefs, alpha, lsnr, erb_hist, spec_hist, c0_hist, h_enc, h_erb, h_df


STATE_NAMES = ("erb_hist", "spec_hist", "c0_hist", "h_enc", "h_erb", "h_df")
INPUT_NAMES = ("feat_erb", "feat_spec") + STATE_NAMES
OUTPUT_NAMES = ("m", "coefs", "alpha", "lsnr") + tuple(f"{n}_out" for n in STATE_NAMES)


def w10_module(seed: int = SEED + 1) -> DeepFilterNetStep:
    """DeepFilterNetStep with random weights and BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    module = DeepFilterNetStep()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return module.eval()


def w10_zero_states(batch: int = 1) -> List[np.ndarray]:
    """The six states at the start of a stream (zeros)."""
    shapes = [(batch, 1, 2, 32), (batch, 2, 2, 96), (batch, 64, 4, 96), (1, batch, 256), (2, batch, 256),
              (2, batch, 256)]
    return [np.zeros(s, np.float32) for s in shapes]


def w10_features(seed: int, frames: int, batch: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(feat_erb (B, 1, frames, 32), feat_spec (B, 2, frames, 96)): normalized-feature-like values."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 1, frames, 32)).astype(np.float32),
            (0.5 * rng.standard_normal((batch, 2, frames, 96))).astype(np.float32))


def export_w10(module: DeepFilterNetStep, frames: int, path: str) -> None:
    """The legacy (TorchScript) export of one call of ``frames`` frames, batch 1, as grurt.from_torch does."""
    erb, spec = w10_features(0, frames)
    args = tuple(torch.from_numpy(a) for a in [erb, spec] + w10_zero_states())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          opset_version=17, dynamo=False)


# ---- the workloads ----

@dataclass
class GraphWorkload:
    name: str
    description: str
    torch_module: nn.Module
    example: Tuple[np.ndarray, ...]      # the inputs of one call (W10: features of one hop and the states)
    model: "grurt.TensorModel"
    frames: int = 0                      # W10: frames per call

    def __str__(self) -> str:
        return f"{self.name} {self.description}"


@functools.lru_cache(maxsize=None)
def get(name: str) -> GraphWorkload:
    """Build workload ``name`` (one of NAMES) once."""
    seed = SEED + NAMES.index(name)
    if name == "W9":
        torch.manual_seed(seed)
        module = AttentionPooling().eval()
        x = np.random.default_rng(seed).standard_normal((1, 100, 40)).astype(np.float32)
        return GraphWorkload(name, "BiGRU(128) + attention pooling, (1, 100, 40)", module, (x,),
                             grurt.from_torch(module, torch.from_numpy(x)))
    if name in ("W10", "W10s20"):
        frames = 1 if name == "W10" else 20
        module = w10_module()
        example = tuple(w10_features(seed, frames)) + tuple(w10_zero_states())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = grurt.from_torch(module, tuple(torch.from_numpy(a) for a in example))
        return GraphWorkload(name, f"DeepFilterNet-style step, S = {frames}", module, example, model, frames)
    raise KeyError(f"unknown workload {name!r}; expected one of {', '.join(NAMES)}")


def torch_outputs(w: GraphWorkload, inputs) -> List[np.ndarray]:
    with torch.no_grad():
        out = w.torch_module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def hops(frames: int, count: int, seed: int = 7) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``count`` hops of W10 features of ``frames`` frames each, for checking a carried stream."""
    erb, spec = w10_features(seed, count * frames)
    return [(erb[:, :, k * frames:(k + 1) * frames], spec[:, :, k * frames:(k + 1) * frames]) for k in range(count)]


def stepper(run):
    """A W10 caller that keeps the six states between calls: ``step(erb, spec) -> outputs`` where
    ``run(inputs list) -> outputs list`` is one runtime's call."""
    states = w10_zero_states()

    def step(erb, spec):
        nonlocal states
        outputs = run([erb, spec] + states)
        states = list(outputs[4:])
        return outputs
    return step
