#!/usr/bin/env python
"""Issue 18: could an ESAM-style encoder (EfficientFormerV2: convolutions at high resolution, attention only at the
lowest stage) be faster than medsam3d-tiny's under onnxruntime? A benchmark of random-weight prototypes, before any
distillation.

Each prototype keeps the packaged default's encoder contract, so the default's prompt encoder and mask decoder take
its output unchanged: (B, 1, 128, 128, 128) -> embedding (B, 128, 8, 8, 8), skips (B, 64, 16^3) at S/8,
(B, 32, 32^3) at S/4 and (B, 8, 64^3) at S/2 (the fine head's input). Built as EfficientFormerV2 is:

* a stride-2 conv stem to S/2, then one stride-2 conv + BatchNorm per halving (EfficientFormerV2's ``Embedding``);
* stages of its FFN block, x + BN(pw(GELU(BN(dw3(GELU(BN(pw(x)))))))): an inverted residual with a depthwise 3^3
  conv, at S/2 .. S/8 and at the S/16 (8^3) token grid;
* attention only at the 8^3 grid: 1-2 blocks of global multi-head self-attention (512 tokens) with
  EfficientFormerV2's local value path (a depthwise conv of V added to the attention output), each then an FFN;
* SAM's neck to 128 channels (``make_neck``, as tiny's), and 1x1 convs to the skip widths where a stage differs.

BatchNorm everywhere, as EfficientFormerV2: onnxruntime folds it into the conv before it (tiny's stem uses
InstanceNorm, which is a reduction over the volume at run time). Layer scale is left out: at inference it folds
into the last BN of each branch.

Timing is the real pipeline: the default ``PromptableModel3D`` with its ``image_encoder`` swapped for a prototype,
``export_onnx`` (fp32, and int8 = quantize_dynamic on MatMul/Gemm), ``OnnxBackend.encode``, interleaved rounds
(``benchutil.median_times``) in one process, 2 threads then 1, the whole timing repeated (the machine is shared).

    python experiments/esam_student.py                      # 2 and 1 threads, 2 runs, 7 rounds each
    python experiments/esam_student.py --threads 2 --runs 1 --repeats 3 --no-out    # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchutil import median_times  # noqa: E402

from medsam3d.models.common import make_neck  # noqa: E402

OUT = REPO / "docs" / "experiments" / "2026-12-01_esam_student.json"
SKIP_CHANS = (64, 32, 8)  # the default's skips at S/8, S/4, S/2 (its decoder's skip_chans and fine head)


# ---------------------------------------------------------------------------------------------- building blocks
def conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = False) -> nn.Module:
    """Conv3d (no bias) + BatchNorm3d [+ GELU]; padding keeps S/stride (kernel 2 stride 2: a patchify)."""
    layers: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(kernel - stride + 1) // 2, groups=groups, bias=False),
        nn.BatchNorm3d(c_out),
    ]
    if act:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


class FFN3D(nn.Module):
    """EfficientFormerV2's FFN, in 3D: x + BN(pw(GELU(BN(dw3(GELU(BN(pw(x)))))))). (B, C, X, Y, Z) -> same."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.body = nn.Sequential(
            conv_bn(dim, hidden, act=True),  # (B, hidden, X, Y, Z): pointwise expand
            conv_bn(hidden, hidden, 3, groups=hidden, act=True),  # depthwise 3^3: the only spatial mixing
            conv_bn(hidden, dim),  # (B, dim, X, Y, Z): pointwise project, no activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GlobalAttention3D(nn.Module):
    """Multi-head self-attention over every token of the grid (8^3 = 512 at 128^3), channels-first as
    EfficientFormerV2's Attention4D: q, k, v by 1x1 conv + BN, plus a depthwise conv of v added to the output."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = conv_bn(dim, 3 * dim)
        self.v_local = conv_bn(dim, dim, 3, groups=dim)
        self.proj = nn.Sequential(nn.GELU(), conv_bn(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, X, Y, Z)
        b, c, nx, ny, nz = x.shape
        n = nx * ny * nz
        q, k, v = self.qkv(x).split(c, dim=1)  # 3 x (B, C, X, Y, Z)
        local = self.v_local(v)
        q, k, v = (t.reshape(b, self.heads, self.hd, n) for t in (q, k, v))  # (B, h, hd, N)
        attn = (q.transpose(2, 3) @ k) * self.hd ** -0.5  # (B, h, N, N)
        out = v @ attn.softmax(dim=-1).transpose(2, 3)  # (B, h, hd, N)
        return self.proj(out.reshape(b, c, nx, ny, nz) + local)

    def macs(self, x: torch.Tensor) -> int:
        """The two token-token products (q k^T and attn v) that no conv hook sees."""
        b, c = x.shape[:2]
        return 2 * b * c * x[0, 0].numel() ** 2


class AttentionBlock3D(nn.Module):
    """x + attention(x), then the FFN (its own residual). (B, C, 8, 8, 8) -> same."""

    def __init__(self, dim: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.attn = GlobalAttention3D(dim, heads)
        self.ffn = FFN3D(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x + self.attn(x))


# ---------------------------------------------------------------------------------------------- the encoder
class ESAMStudent3D(nn.Module):
    """EfficientFormerV2-style 3D image encoder with medsam3d-tiny's contract (``base.ImageEncoder``).

    widths: channels at S/2, S/4, S/8, S/16; depths: FFN blocks at S/2, S/4, S/8, S/16 (before attention);
    attn: attention blocks at S/16; expansion: FFN hidden / dim per stage; down: kernel of the stride-2 convs
    (3 as EfficientFormerV2, 2 a patchify like tiny's first step)."""

    def __init__(self, widths: tuple[int, int, int, int], depths: tuple[int, int, int, int], attn: int, heads: int,
                 expansion: tuple[float, float, float, float], down: int = 3, img_size: int = 128,
                 out_chans: int = 128) -> None:
        super().__init__()
        self.img_size = img_size
        c2, c4, c8, c16 = widths
        e2, e4, e8, e16 = expansion
        self.stem = conv_bn(1, c2, down, 2, act=True)  # (B, 1, S^3) -> (B, c2, (S/2)^3)
        self.stage2 = nn.Sequential(*[FFN3D(c2, e2) for _ in range(depths[0])])
        self.down4 = conv_bn(c2, c4, down, 2)  # -> (B, c4, (S/4)^3)
        self.stage4 = nn.Sequential(*[FFN3D(c4, e4) for _ in range(depths[1])])
        self.down8 = conv_bn(c4, c8, down, 2)  # -> (B, c8, (S/8)^3)
        self.stage8 = nn.Sequential(*[FFN3D(c8, e8) for _ in range(depths[2])])
        self.down16 = conv_bn(c8, c16, down, 2)  # -> (B, c16, (S/16)^3): the 8^3 token grid
        # the token blocks (``blocks`` in the contract): FFNs, then attention
        self.blocks = nn.ModuleList([FFN3D(c16, e16) for _ in range(depths[3])]
                                    + [AttentionBlock3D(c16, heads, e16) for _ in range(attn)])
        self.neck = make_neck(c16, out_chans)  # -> (B, 128, 8, 8, 8), as tiny's
        s8, s4, s2 = SKIP_CHANS
        self.skip8 = nn.Identity() if c8 == s8 else nn.Conv3d(c8, s8, 1)  # (B, 64, (S/8)^3)
        self.skip4 = nn.Identity() if c4 == s4 else nn.Conv3d(c4, s4, 1)  # (B, 32, (S/4)^3)
        self.fine_skip = nn.Conv3d(c2, s2, 1)  # (B, 8, (S/2)^3), as tiny's fine_skip

    def _run(self, x: torch.Tensor):
        f2 = self.stage2(self.stem(x))
        f4 = self.stage4(self.down4(f2))
        f8 = self.stage8(self.down8(f4))
        t = self.down16(f8)
        streams = []
        for block in self.blocks:
            t = block(t)
            streams.append(t.permute(0, 2, 3, 4, 1))  # (B, X, Y, Z, C), as forward_blocks promises
        return streams, self.neck(t), (self.skip8(f8), self.skip4(f4), self.fine_skip(f2))

    def forward_blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        streams, final, _ = self._run(x)
        return streams, final

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 1, S, S, S) -> (embedding (B, 128, S/16, ..), S/8 skip, S/4 skip, S/2 skip)."""
        _, final, skips = self._run(x)
        return (final, *skips)


VARIANTS = {
    # tiny's widths, EfficientFormerV2's 3^3 stride-2 downsampling, an FFN block per stage from S/4, two attention
    # blocks: about tiny's MACs, what "the same encoder done the ESAM way" costs
    "esam-m": dict(widths=(16, 32, 64, 192), depths=(0, 1, 2, 1), attn=2, heads=6, expansion=(4, 4, 4, 4), down=3),
    # 2^3 patchify downsampling (8 taps, not 27), thinner top, one attention block: about half tiny's MACs
    "esam-s": dict(widths=(16, 32, 64, 160), depths=(0, 1, 1, 1), attn=1, heads=5, expansion=(4, 3, 3, 3), down=2),
    # narrower still, nothing at S/4: about a quarter
    "esam-xs": dict(widths=(8, 24, 48, 128), depths=(0, 0, 1, 0), attn=1, heads=4, expansion=(4, 2, 3, 3), down=2),
}


# ---------------------------------------------------------------------------------------------- counting
def count_macs(encoder: nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of one forward: every Conv3d and Linear (by forward hook), plus the token-token products
    of attention (tiny's grouped attention: each token against the n of its group; the prototypes' global
    attention: against all N). Norms, activations and softmax are not counted."""
    from medsam3d.models.tiny_encoder import SparseAttentionBlock3D

    total = [0]

    def conv(m: nn.Conv3d, _inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    def linear(m: nn.Linear, _inp, out):
        total[0] += out.numel() * m.in_features

    def global_attn(m: GlobalAttention3D, inp, _out):
        total[0] += m.macs(inp[0])

    def grouped_attn(m: SparseAttentionBlock3D, inp, _out):  # (B, X, Y, Z, C); groups of group^3 tokens
        b, x, y, z, c = inp[0].shape
        total[0] += 2 * b * x * y * z * int(np.prod(m.group)) * c

    hooks = []
    for m in encoder.modules():
        for kind, fn in ((nn.Conv3d, conv), (nn.Linear, linear), (GlobalAttention3D, global_attn),
                         (SparseAttentionBlock3D, grouped_attn)):
            if isinstance(m, kind):
                hooks.append(m.register_forward_hook(fn))
    try:
        with torch.no_grad():
            encoder(image)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


# ---------------------------------------------------------------------------------------------- models
def default_model():
    from medsam3d.backends.torch_backend import load_model

    return load_model("default", None, "cpu")[0].eval()


def with_encoder(default, encoder: nn.Module):
    """The default PromptableModel3D (its trained prompt encoder and decoder) with ``encoder`` in place of tiny's."""
    model = copy.deepcopy(default)
    model.image_encoder = encoder.eval()
    model.weight_sources["image_encoder"] = "random"
    return model


def check_contract(default, encoder: nn.Module) -> None:
    """Same output shapes as the default's encoder, and the default's decoder runs on them."""
    x = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        want = default.encode(x)
        model = with_encoder(default, encoder)
        got = model.encode(x)
        shapes = [tuple(t.shape) for t in (got.embedding, *got.skips)]
        assert shapes == [tuple(t.shape) for t in (want.embedding, *want.skips)], shapes
        streams, final = encoder.forward_blocks(x)
        assert len(streams) == len(encoder.blocks) and all(s.shape[1:4] == (8, 8, 8) for s in streams)
        model.decode(got, points=torch.tensor([[[64.0, 64.0, 64.0]]]), labels=torch.tensor([[1]]), keep_best=True)


def _randomise_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics (a fresh BN is an identity; ORT folds either, but the check should not be trivial)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(1 + 0.2 * torch.rand(m.num_features, generator=gen))


# ---------------------------------------------------------------------------------------------- timing
def time_all(models: dict, threads: int, repeats: int, work: Path) -> dict:
    """{name: {"torch": s, "onnxruntime fp32": s, "onnxruntime int8": s}}: medians over interleaved rounds, in this
    process. The onnxruntime sessions (every encoder, fp32 and int8) are interleaved with each other, and torch's
    encoders with each other, in two separate groups: one library's worker threads still spinning after a call
    would otherwise slow the other's next call."""
    from medsam3d.backends.onnx_backend import OnnxBackend
    from medsam3d.backends.torch_backend import TorchBackend

    torch.set_num_threads(threads)
    crop = np.random.default_rng(0).standard_normal((128,) * 3).astype(np.float32)
    out: dict = {name: {} for name in models}
    ort = {(name, f"onnxruntime {q}"): OnnxBackend(work / f"{name}-{q}", threads)
           for name in models for q in ("fp32", "int8")}
    pt = {(name, "torch"): TorchBackend(models[name]) for name in models}
    for group in (ort, pt):
        for backend in group.values():
            backend.encode(crop)  # warm-up
        times = median_times([lambda b=b: b.encode(crop) for b in group.values()], repeats)
        for (name, kind), t in zip(group, times):
            out[name][kind] = t
    return out


def profile_ops(folder: Path, threads: int, rounds: int = 3) -> dict:
    """Share of encoder.onnx's node time by op type (onnxruntime's profiler; fused ops keep their fused name; Conv
    split into depthwise / dense and by kernel) -> {op type: ms per call}, largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
    crop = np.random.default_rng(0).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
    for _ in range(rounds + 1):
        session.run(None, {"image": crop})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"]  # leave the warm-up run out
    total: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end:
            op = e["args"]["op_name"]
            if op in ("Conv", "FusedConv"):  # split by kind: depthwise or dense, and the kernel (k^3)
                image, weight = (list(d.values())[0] for d in e["args"]["input_type_shape"][:2])
                depthwise = weight[1] == 1 and image[1] > 1  # weight (C_out, C_in / groups, k, k, k)
                op = f"{op} {'dw' if depthwise else 'dense'} {weight[2]}^3"
            total[op] = total.get(op, 0.0) + e["dur"] / 1e3 / rounds
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--runs", type=int, default=2, help="the whole timing, repeated (a shared machine)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per timing")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-out", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    from medsam3d.export import export_onnx

    torch.manual_seed(0)
    default = default_model()
    x = torch.randn(1, 1, 128, 128, 128)
    models = {"medsam3d-tiny": default}
    info = {"medsam3d-tiny": {"params": sum(p.numel() for p in default.image_encoder.parameters()),
                              "macs": count_macs(default.image_encoder, x), "config": "the packaged default"}}
    for i, name in enumerate(args.variants.split(",")):
        encoder = ESAMStudent3D(**VARIANTS[name]).eval()
        _randomise_bn(encoder, i)
        check_contract(default, encoder)
        models[name] = with_encoder(default, encoder)
        info[name] = {"params": sum(p.numel() for p in encoder.parameters()), "macs": count_macs(encoder, x),
                      "config": {k: list(v) if isinstance(v, tuple) else v for k, v in VARIANTS[name].items()}}
    for name, row in info.items():
        print(f"{name:14s} encoder params {row['params'] / 1e6:5.2f} M   MACs {row['macs'] / 1e9:5.2f} G", flush=True)

    results = {"issue": 18, "img_size": 128, "repeats": args.repeats, "machine": platform.processor() or "",
               "note": "random encoder weights (timing does not depend on values); the default's trained decoder. "
                       "The machine was shared with a training job on one of its two cores.",
               "encoders": info, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, model in models.items():
            for q in ("fp32", "int8"):
                meta = export_onnx(model, work / f"{name}-{q}", quantize=None if q == "fp32" else "int8")
                info[name][f"check_{q}"] = meta["check"]
            print(f"exported {name}: fp32 embedding max diff {info[name]['check_fp32']['embedding_max_abs_diff']:.2g}",
                  flush=True)
        for run in range(args.runs):
            for threads in (int(t) for t in args.threads.split(",")):
                times = time_all(models, threads, args.repeats, work)
                results["runs"].append({"run": run + 1, "threads": threads, "encoder_s": times})
                print_table(info, times, run + 1, threads)
        if not args.no_profile:  # where the time goes: onnxruntime fp32, 1 thread, by op type
            print("\nonnxruntime fp32, 1 thread, encoder time by op type (ms per call):")
            for name in models:
                ops = results["encoders"][name]["ort_fp32_1thread_ms_by_op"] = profile_ops(work / f"{name}-fp32", 1)
                print(f"{name:14s} " + ", ".join(f"{op} {ms:.1f}" for op, ms in list(ops.items())[:6]), flush=True)
    if not args.no_out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


def print_table(info: dict, times: dict, run: int, threads: int) -> None:
    base = times["medsam3d-tiny"]
    print(f"\nrun {run}, {threads} thread(s): encoder, median ms (ratio = time / tiny's time under the same backend)")
    print(f"{'encoder':14s} {'params':>7s} {'MACs':>7s} {'torch':>8s} {'ORT fp32':>9s} {'ratio':>6s} "
          f"{'ORT int8':>9s} {'ratio':>6s}")
    for name, row in times.items():
        fp32, int8 = row["onnxruntime fp32"], row["onnxruntime int8"]
        print(f"{name:14s} {info[name]['params'] / 1e6:6.2f}M {info[name]['macs'] / 1e9:6.2f}G "
              f"{row['torch'] * 1e3:8.1f} {fp32 * 1e3:9.1f} {fp32 / base['onnxruntime fp32']:6.2f} "
              f"{int8 * 1e3:9.1f} {int8 / base['onnxruntime int8']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
