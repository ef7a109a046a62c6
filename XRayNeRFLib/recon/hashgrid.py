"""Multiresolution hash-grid neural field for mu (Instant-NGP style), pure torch.

The field lives on the unit cube of *normalised coordinates* p = (x, y, z) in [0, 1]^3 (x along the
output grid's i axis, y along j, z along k; :mod:`nerf` maps millimetres to p). It has

- ``levels`` grids with geometrically spaced resolutions R_l = floor(base * b^l), b chosen so that the
  last level has ``finest_resolution`` cells per unit; level l has vertices at integer multiples of
  1/R_l, and each vertex owns a ``features_per_level`` vector.
- Vertex storage: one table of ``min(2^log2_table_size, (R_l + 1)^3)`` rows per level. A level whose
  (R_l + 1)^3 vertices fit is indexed densely (x + y (R+1) + z (R+1)^2, no collisions); finer levels
  use the spatial hash (x * 1 XOR y * 2654435761 XOR z * 805459861) mod T of Teschner et al.
- Encoding: per level, trilinear interpolation of the 8 cell-corner features; the level features are
  concatenated (C = levels * features_per_level).
- ``normalize``: a LayerNorm over those C features (zero mean and unit variance per point, then a
  learned affine), the "normalized hash encoder" of arXiv 2506.19742.
- Head: MLP (ReLU hidden layers) to one value t; mu = MU_SCALE * softplus(t) >= 0 in 1/mm (MU_SCALE
  as in :mod:`voxel`: t of order 1 <-> soft tissue).

Two evaluation paths give the same values (up to rounding): :meth:`HashGridField.forward` for arbitrary
points (one gather of all levels' 8 corners, chunked; its backward is one ``index_add_`` into the table
gradient) and :meth:`HashGridField.evaluate_grid` for a regular grid of points (a tensor product of axis
coordinates), which is separable: it takes the level's vertex block once (a slice for dense levels) and
interpolates along x, y, z in turn with 1-D interpolation matrices, about 8x less work and memory than
the corner gather. The head runs as one fused autograd function over blocks of points that stay in cache
(the backward recomputes a block's activations), so memory stays bounded by the features and their
gradient.

The head (MLP and LayerNorm) can be saved and loaded alone with a header holding the encoding config
(:meth:`save_head`, :meth:`load_head`): the mapping-consistency initialisation (MCI) loads a head
pre-fitted on a prior CT and re-seeds the hash table (:meth:`reset_table`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MU_SCALE = 0.01  # 1/mm, same scale as voxel.MU_SCALE
HEAD_FORMAT = "xraynerf-hashgrid-head"
HEAD_VERSION = 1
_PRIMES = (1, 2654435761, 805459861)
# layout fields a loaded head need not match: they place the table's vertices (re-drawn by MCI anyway) but
# leave the head's shapes and the level order (coarse to fine) unchanged, so one head serves every grid size
HEAD_FREE_FIELDS = ("finest_resolution", "log2_table_size")
LAYERNORM_EPS = 1e-12  # small: the hash entries start at +-1e-4 (variance ~1e-9), which the LayerNorm must still scale up


@dataclass(frozen=True)
class HashGridConfig:
    """Encoding and head layout. Resolutions are cells per unit of normalised coordinate (the longest
    side of the output box is 1)."""

    levels: int = 12
    features_per_level: int = 2
    log2_table_size: int = 17
    base_resolution: int = 8
    finest_resolution: int = 128
    hidden_width: int = 32
    hidden_layers: int = 1
    normalize: bool = True
    table_init_scale: float = 1e-4  # hash entries start uniform in +-scale (Instant-NGP)

    def __post_init__(self) -> None:
        if self.levels < 1 or self.features_per_level < 1 or self.hidden_width < 1 or self.hidden_layers < 0:
            raise ValueError(f"hash grid sizes must be positive (levels, features, width >= 1, hidden_layers >= 0), got {self}")
        if not 4 <= self.log2_table_size <= 26:
            raise ValueError(f"log2_table_size must be in 4..26, got {self.log2_table_size}")
        if not 1 <= self.base_resolution <= self.finest_resolution:
            raise ValueError(f"need 1 <= base_resolution <= finest_resolution, got {self.base_resolution} and {self.finest_resolution}")

    @property
    def feature_dim(self) -> int:
        return self.levels * self.features_per_level

    def resolutions(self) -> List[int]:
        if self.levels == 1:
            return [self.finest_resolution]
        growth = math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.levels - 1))
        res = [int(math.floor(self.base_resolution * growth**l + 1e-6)) for l in range(self.levels)]
        res[-1] = self.finest_resolution
        return res

    def header(self) -> dict:
        """The fields a saved head must match (all but the table's initial scale)."""
        d = asdict(self)
        d.pop("table_init_scale")
        return d


@dataclass
class GridPlan:
    """Precomputed indices for :meth:`HashGridField.evaluate_grid` on one tensor-product grid."""

    shape: Tuple[int, int, int]  # (K, J, I)
    table_index: List[Optional[Tensor]]  # per level: hashed: (nz, ny, nx) int64 rows of the vertex block in the level's table; dense: None
    block: List[Tuple[Tuple[int, int], ...]]  # per level, per axis (z, y, x): the block's vertex range [lo, hi)
    interp: List[Tuple[Tensor, Tensor, Tensor]]  # per level, per axis (z, y, x): (n_out, n_vertices) linear interpolation matrix


class _GatherColumns(torch.autograd.Function):
    """``table[:, rows]`` for a (F, T) table and int64 ``rows`` of any shape -> (F, *rows.shape), with one
    ``index_add_`` of the whole output gradient as backward (autograd's advanced indexing builds and fills a
    full-size zero gradient per lookup; here one per call)."""

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.table_shape = table.shape
        return table.index_select(1, rows.reshape(-1)).reshape(table.shape[0], *rows.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rows,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.table_shape)
        out.index_add_(1, rows.reshape(-1), grad.reshape(ctx.table_shape[0], -1))
        return out, None


def gather_columns(table: Tensor, rows: Tensor) -> Tensor:
    """(F, *rows.shape) = ``table[:, rows]`` for a (F, T) table; backward is one ``index_add_``."""
    return _GatherColumns.apply(table, rows)


class _GridEncode(torch.autograd.Function):
    """The separable grid encoding (see :meth:`HashGridField.encode_grid`) as one function of the whole table:
    each level's interpolated block is written straight into its channels of the (C, K, J, I) output (no
    concatenation), and the backward writes each level's vertex-block gradient straight into one (F, T)
    table gradient (a slice copy for dense levels, an ``index_add_`` for hashed ones)."""

    @staticmethod
    def forward(ctx, field: "HashGridField", plan: "GridPlan", table: Tensor) -> Tensor:
        f = table.shape[0]
        k, j, i = plan.shape
        out = table.new_empty(len(field.res) * f, k, j, i)
        for level in range(len(plan.table_index)):
            v = field._vertex_block(table, plan, level)  # (F, nz, ny, nx)
            mz, my, mx = plan.interp[level]
            nz, ny, nx = v.shape[1:]
            v = v.reshape(-1, nx).mm(mx.t()).view(f, nz, ny, i)  # along x
            v = torch.matmul(my, v)  # along y: (F, nz, J, I)
            for c in range(f):  # along z, into the output's channels
                torch.mm(mz, v[c].view(nz, j * i), out=out[level * f + c].view(k, j * i))
        ctx.field, ctx.plan, ctx.table_shape = field, plan, table.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        field, plan = ctx.field, ctx.plan
        f, _ = ctx.table_shape
        k, j, i = plan.shape
        grad = grad.contiguous()
        out = grad.new_zeros(ctx.table_shape)
        for level, rows in enumerate(plan.table_index):
            mz, my, mx = plan.interp[level]
            (z0, z1), (y0, y1), (x0, x1) = plan.block[level]
            nz, ny, nx = z1 - z0, y1 - y0, x1 - x0
            g = grad.new_empty(f, nz, j, i)
            for c in range(f):
                torch.mm(mz.t(), grad[level * f + c].view(k, j * i), out=g[c].view(nz, j * i))
            g = torch.matmul(my.t(), g)  # (F, nz, ny, I)
            g = g.view(-1, i).mm(mx).view(f, nz, ny, nx)
            lvl = out[:, field.offsets[level] : field.offsets[level + 1]]
            if rows is None:
                r1 = field.res[level] + 1
                lvl.view(f, r1, r1, r1)[:, z0:z1, y0:y1, x0:x1].copy_(g)  # the block's vertices are distinct
            else:
                lvl.index_add_(1, rows.reshape(-1), g.reshape(f, -1))
        return None, None, out


HEAD_CHUNK = 1 << 13  # points per block of the fused head: its activations (C + 2 * width floats a point) stay in cache


def _layer_norm_block(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(x - mean) / sqrt(var + eps) over the channels of a block x (C, n): xhat (C, n) and rstd (1, n)."""
    d = x - x.mean(0, keepdim=True)
    rstd = torch.rsqrt((d * d).mean(0, keepdim=True) + LAYERNORM_EPS)
    return d.mul_(rstd), rstd


def _mlp_block(x: Tensor, layers: Sequence[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, List[Tensor]]:
    """t (n,) before the softplus, and each layer's input, for a block x (in, n)."""
    inputs, h = [], x
    for n, (w, b) in enumerate(layers):
        inputs.append(h)
        h = torch.addmm(b[:, None], w, h)
        if n < len(layers) - 1:
            h = h.relu_()
    return h[0], inputs


class _FusedHead(torch.autograd.Function):
    """mu (N,) = MU_SCALE * softplus(MLP(LayerNorm?(feats))) for feats (C, N), evaluated block by block
    (:data:`HEAD_CHUNK` points) so that the activations stay in cache; the backward recomputes each block's
    MLP activations and applies the hand-written chain rule (the same values as autograd through
    :meth:`HashGridField.head_reference` up to rounding, in about a third of its time and without
    (C, N)-sized temporaries). The LayerNorm's affine is folded into the first layer (W1 diag(w),
    b1 + W1 b); with ``keep`` the normalised features (C, N) are kept for the backward in place of feats.
    params: LayerNorm weight and bias (when ``normalize``), then weight, bias of each linear layer."""

    @staticmethod
    def forward(ctx, normalize: bool, chunk: int, keep: bool, feats: Tensor, *params: Tensor) -> Tensor:
        n = feats.shape[1]
        out = feats.new_empty(n)
        layers = [(params[i], params[i + 1]) for i in range(2 if normalize else 0, len(params), 2)]
        if normalize:
            w1, b1 = layers[0]
            layers[0] = (w1 * params[0][None, :], torch.addmv(b1, w1, params[1]))
        blocks = []
        for s in range(0, n, chunk):
            x = feats[:, s : s + chunk]
            if normalize:
                x, rstd = _layer_norm_block(x)
                if keep:
                    blocks.append((x, rstd))
            t, _ = _mlp_block(x, layers)
            out[s : s + chunk] = F.softplus(t).mul_(MU_SCALE)
        ctx.normalize, ctx.chunk, ctx.blocks = normalize, chunk, blocks
        ctx.save_for_backward(*(params if normalize else (feats, *params)))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        normalize, chunk = ctx.normalize, ctx.chunk
        if normalize:
            params = ctx.saved_tensors
            blocks = ctx.blocks
            if not blocks:
                raise RuntimeError("the fused hash-grid head was evaluated without keep=True and cannot be differentiated")
            n_points = sum(b[0].shape[1] for b in blocks)
            c = blocks[0][0].shape[0]
        else:
            feats, *params = ctx.saved_tensors
            n_points, c = feats.shape[1], feats.shape[0]
        first = 2 if normalize else 0
        layers = [(params[i], params[i + 1]) for i in range(first, len(params), 2)]
        if normalize:
            w1_raw, b1_raw = layers[0]
            layers[0] = (w1_raw * params[0][None, :], torch.addmv(b1_raw, w1_raw, params[1]))
        need_x = ctx.needs_input_grad[3]
        gx = grad.new_empty(c, n_points) if need_x else None
        g_layers = [[torch.zeros_like(w), torch.zeros_like(b)] for w, b in layers]
        grad = grad.contiguous()
        for k, s in enumerate(range(0, n_points, chunk)):
            if normalize:
                x, rstd = blocks[k]
            else:
                x = feats[:, s : s + chunk]
            t, inputs = _mlp_block(x, layers)
            g = (grad[s : s + chunk] * torch.sigmoid(t)).mul_(MU_SCALE)[None, :]  # d mu / d t (softplus' = sigmoid), (1, n)
            for n in range(len(layers) - 1, -1, -1):
                a = inputs[n]  # (in, n): this layer's input (post-ReLU for hidden layers)
                g_layers[n][0].addmm_(g, a.t())
                g_layers[n][1].add_(g.sum(1))
                if n == 0 and not need_x:
                    break
                g = layers[n][0].t().mm(g)  # (in, n)
                if n > 0:
                    g = torch.ops.aten.threshold_backward(g, a, 0.0)  # ReLU: a = relu(pre) > 0 <=> pre > 0
            if need_x:
                if normalize:  # LayerNorm backward; g is the gradient of xhat (the affine is folded into layer 1)
                    m1 = g.mean(0, keepdim=True)
                    m2 = (g * x).mean(0, keepdim=True)
                    g = (g - m1).addcmul_(x, m2, value=-1.0).mul_(rstd)
                gx[:, s : s + chunk] = g
        grads = []
        if normalize:  # unfold: W1' = W1 diag(w), b1' = b1 + W1 b
            gw1f, gb1f = g_layers[0]
            g_norm_w = (w1_raw * gw1f).sum(0)
            g_norm_b = w1_raw.t().mv(gb1f)
            g_layers[0] = [gw1f * params[0][None, :] + torch.outer(gb1f, params[1]), gb1f]
            grads += [g_norm_w, g_norm_b]
        for gw, gb in g_layers:
            grads += [gw, gb]
        return (None, None, None, gx, *[gr if ctx.needs_input_grad[4 + i] else None for i, gr in enumerate(grads)])


class HashGridField(nn.Module):
    """mu(p) = MU_SCALE * softplus(MLP(LayerNorm?(hash_encoding(p)))), p (N, 3) in [0, 1]^3."""

    def __init__(self, config: Optional[HashGridConfig] = None, seed: int = 0, chunk_points: int = 1 << 20):
        super().__init__()
        self.config = config if config is not None else HashGridConfig()
        self.chunk_points = int(chunk_points)
        cfg = self.config
        self.res = cfg.resolutions()
        t_max = 1 << cfg.log2_table_size
        sizes = [min(t_max, (r + 1) ** 3) for r in self.res]
        self.dense = [(r + 1) ** 3 <= t_max for r in self.res]
        self.sizes = sizes
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.table = nn.Parameter(torch.zeros(cfg.features_per_level, self.offsets[-1]))  # (F, rows): channels first
        c = cfg.feature_dim
        if cfg.normalize:
            self.norm_weight = nn.Parameter(torch.ones(c))
            self.norm_bias = nn.Parameter(torch.zeros(c))
        widths = [c] + [cfg.hidden_width] * cfg.hidden_layers + [1]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.reset_table(seed)
        self.reset_head(seed)

    # ------------------------------------------------------------------ initialisation
    def reset_table(self, seed: int) -> None:
        """Re-draw every hash/dense table entry uniformly in +-table_init_scale (seeded)."""
        g = torch.Generator().manual_seed(int(seed))
        s = self.config.table_init_scale
        with torch.no_grad():
            vals = (torch.rand(self.table.shape, generator=g, dtype=torch.float32) * 2 - 1) * s
            self.table.copy_(vals.to(self.table))

    def reset_head(self, seed: int, initial_mu: float = 0.002) -> None:
        """Random MLP (Kaiming-uniform as nn.Linear, seeded), identity LayerNorm affine; the output bias
        is set so that mu starts near ``initial_mu`` (1/mm) where the features are small."""
        g = torch.Generator().manual_seed(int(seed) + 1)
        with torch.no_grad():
            for lin in self.mlp:
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=g) * 2 - 1) * math.sqrt(6.0 / lin.in_features) / math.sqrt(2.0))
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=g) * 2 - 1) * bound)
            y = initial_mu / MU_SCALE
            self.mlp[-1].bias.fill_(y + math.log(-math.expm1(-y)))  # softplus^-1
            if self.config.normalize:
                self.norm_weight.fill_(1.0)
                self.norm_bias.zero_()

    # ------------------------------------------------------------------ indexing
    def _vertex_rows(self, level: int, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """Table rows (broadcast shape) of integer vertex coordinates x, y, z (int64) at ``level``."""
        r = self.res[level]
        if self.dense[level]:
            idx = x + y * (r + 1) + z * (r + 1) ** 2
        else:
            idx = ((x * _PRIMES[0]) ^ (y * _PRIMES[1]) ^ (z * _PRIMES[2])) % self.sizes[level]
        return idx + self.offsets[level]

    # ------------------------------------------------------------------ encodings
    def encode(self, points: Tensor) -> Tensor:
        """Hash encoding of points (N, 3) float in normalised coordinates (clamped to [0, 1]):
        (C, N) float32, level-major (level 0's features first), channels first like the head's input.
        All levels' 8 corner rows are gathered at once (:func:`gather_columns`: one ``index_add_`` as the
        table's gradient)."""
        p = points.to(self.table.dtype).clamp(0.0, 1.0)
        rows, weights = [], []
        two = torch.arange(2, device=p.device)
        for level, r in enumerate(self.res):
            u = p * r
            i0 = u.floor().clamp(0, r - 1)
            w = u - i0  # (N, 3) in [0, 1]
            i0 = i0.long()
            # the 8 corners as a (2, 2, 2) block indexed [bz, by, bx]: corner bx + 2 by + 4 bz after a reshape
            v = [i0[:, a][None, :] + two[:, None] for a in range(3)]  # per axis (2, N): lower, upper vertex
            rows.append(self._vertex_rows(level, v[0][None, None], v[1][None, :, None], v[2][:, None, None]).reshape(8, -1))
            lw = [torch.stack([1.0 - w[:, a], w[:, a]]) for a in range(3)]  # per axis (2, N): lower, upper weight
            weights.append(((lw[0][None, None] * lw[1][None, :, None]) * lw[2][:, None, None]).reshape(8, -1))
        n_lev, f, n = len(self.res), self.config.features_per_level, p.shape[0]
        v = gather_columns(self.table, torch.cat(rows))  # (F, 8 L, N)
        prod = (v * torch.cat(weights)).view(f, n_lev, 8, n)
        corners = prod.unbind(2)  # one backward (a stack), where indexing each corner would fill a full-size gradient
        acc = corners[0]
        for c in corners[1:]:
            acc = acc + c  # (F, L, N), summed corner by corner
        return acc.transpose(0, 1).reshape(n_lev * f, n)

    def plan_grid(self, axes_zyx: Sequence[Tensor]) -> GridPlan:
        """Plan the separable evaluation on the tensor-product grid of normalised axis coordinates
        ``axes_zyx = (z (K,), y (J,), x (I,))`` (output shape (K, J, I)): per level and axis the vertex
        range the grid touches and the (n_out, n_vertices) matrix of the 1-D linear interpolation (two
        non-zeros a row, 1 - w and w)."""
        if len(axes_zyx) != 3:
            raise ValueError("axes_zyx must hold three 1-D coordinate tensors (z, y, x)")
        axes = [a.detach().to(device=self.table.device, dtype=torch.float64).reshape(-1).clamp(0.0, 1.0) for a in axes_zyx]
        rows, blocks, mats = [], [], []
        for level, r in enumerate(self.res):
            verts, ranges, per_axis = [], [], []
            for a in axes:
                u = a * r
                i0 = u.floor().clamp(0, r - 1)
                w = u - i0  # in [0, 1]
                i0 = i0.long()
                lo, hi = int(i0.min()), int(i0.max()) + 1
                verts.append(torch.arange(lo, hi + 1, device=a.device))
                ranges.append((lo, hi + 1))
                m = torch.zeros(len(a), hi + 1 - lo, dtype=torch.float64, device=a.device)
                out = torch.arange(len(a), device=a.device)
                m[out, i0 - lo] = 1.0 - w
                m[out, i0 - lo + 1] = w
                per_axis.append(m.to(self.table.dtype))
            vz, vy, vx = verts
            if self.dense[level]:
                rows.append(None)  # the block is a slice of the level's (R+1)^3 table
            else:
                rows.append(self._vertex_rows(level, vx[None, None, :], vy[None, :, None], vz[:, None, None]) - self.offsets[level])
            blocks.append(tuple(ranges))
            mats.append(tuple(per_axis))
        return GridPlan(tuple(len(a) for a in axes), rows, blocks, mats)

    def _vertex_block(self, table: Tensor, plan: GridPlan, level: int) -> Tensor:
        """(F, nz, ny, nx) vertex features of ``level``'s block in ``plan``: a slice of a dense level's
        (R+1)^3 table, a gather from a hashed level's."""
        f = self.config.features_per_level
        lvl = table[:, self.offsets[level] : self.offsets[level + 1]]
        rows = plan.table_index[level]
        if rows is None:
            r1 = self.res[level] + 1
            (z0, z1), (y0, y1), (x0, x1) = plan.block[level]
            return lvl.view(f, r1, r1, r1)[:, z0:z1, y0:y1, x0:x1]
        return lvl.index_select(1, rows.reshape(-1)).view(f, *rows.shape)

    def encode_grid(self, plan: GridPlan) -> Tensor:
        """Hash encoding on a planned grid: (C, K, J, I) float32, the same values as :meth:`encode` (up to
        rounding). Per level the vertex block (dense levels: a slice of the level's table, hashed levels: a
        gather) is interpolated along x, y, z in turn by the plan's 1-D interpolation matrices (matrix
        products: cheaper than gathers along an axis, and their backward needs no scatter); one autograd
        function (:class:`_GridEncode`) writes the levels into the output and their gradients into the table's."""
        return _GridEncode.apply(self, plan, self.table)

    # ------------------------------------------------------------------ head
    def normalized_features(self, feats_cn: Tensor) -> Tensor:
        """The head's input: (C, N) features, LayerNorm'd over C when ``normalize`` (else unchanged)."""
        if not self.config.normalize:
            return feats_cn
        mean = feats_cn.mean(0, keepdim=True)
        var = feats_cn.var(0, unbiased=False, keepdim=True)
        return (feats_cn - mean) * torch.rsqrt(var + LAYERNORM_EPS) * self.norm_weight[:, None] + self.norm_bias[:, None]

    def head_reference(self, feats_cn: Tensor) -> Tensor:
        """mu (N,) 1/mm from features (C, N) with plain autograd ops (reference for :meth:`head`)."""
        h = self.normalized_features(feats_cn)
        for n, lin in enumerate(self.mlp):
            h = torch.addmm(lin.bias[:, None], lin.weight, h)
            if n < len(self.mlp) - 1:
                h = torch.relu(h)
        return MU_SCALE * F.softplus(h[0])

    def head_params(self) -> List[Tensor]:
        """The fused head's parameter list: LayerNorm weight and bias (when normalised), then each
        linear layer's weight and bias."""
        ps = [self.norm_weight, self.norm_bias] if self.config.normalize else []
        for lin in self.mlp:
            ps += [lin.weight, lin.bias]
        return ps

    def head(self, feats_cn: Tensor) -> Tensor:
        """mu (N,) 1/mm from features (C, N): the fused block-wise head (:class:`_FusedHead`; memory
        bounded by the (C, N) input and its gradient)."""
        x = feats_cn if feats_cn.is_contiguous() else feats_cn.contiguous()
        keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.head_params()))
        return _FusedHead.apply(self.config.normalize, HEAD_CHUNK, keep, x, *self.head_params())

    def forward(self, points: Tensor) -> Tensor:
        """mu (N,) float32 1/mm at points (N, 3) normalised coordinates, evaluated in chunks."""
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (N, 3) normalised coordinates, got {tuple(points.shape)}")
        out = []
        for s in range(0, points.shape[0], self.chunk_points):
            out.append(self.head(self.encode(points[s : s + self.chunk_points])))
        return torch.cat(out) if out else points.new_zeros(0)

    def evaluate_grid(self, plan: GridPlan) -> Tensor:
        """mu (K, J, I) float32 1/mm on a planned grid (see :meth:`plan_grid`)."""
        feats = self.encode_grid(plan)
        c = feats.shape[0]
        return self.head(feats.reshape(c, -1)).reshape(plan.shape)

    # ------------------------------------------------------------------ head I/O
    def head_state(self) -> dict:
        keys = [k for k in self.state_dict() if k != "table"]
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k in keys}

    def save_head(self, path, meta: Optional[dict] = None) -> None:
        """Save the MLP (and LayerNorm) weights with a header (format, version, encoding config, meta)."""
        payload = {
            "format": HEAD_FORMAT,
            "version": HEAD_VERSION,
            "config": self.config.header(),
            "meta": dict(meta or {}),
            "state": self.head_state(),
        }
        torch.save(payload, str(path))

    def load_head(self, path) -> dict:
        """Load a head saved by :meth:`save_head`; refuses a file whose encoding config differs from this
        field's (ValueError naming the fields) except in :data:`HEAD_FREE_FIELDS` (finest resolution and
        table size, which follow the output grid). Returns the file's ``meta``."""
        try:
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(
                f"hash-grid head file {path} does not exist; give a file made by scripts/prefit_hashgrid_mlp.py or mci=None"
            ) from None
        except (RuntimeError, OSError, EOFError) as exc:
            raise ValueError(
                f"{path} is not a readable hash-grid head file ({exc}); regenerate it with scripts/prefit_hashgrid_mlp.py"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
            raise ValueError(
                f"{path} is not a hash-grid head file (no '{HEAD_FORMAT}' header); use scripts/prefit_hashgrid_mlp.py to make one"
            )
        if payload.get("version") != HEAD_VERSION:
            raise ValueError(f"{path} has head format version {payload.get('version')}, this engine reads version {HEAD_VERSION}")
        saved, mine = payload["config"], self.config.header()
        diff = [
            f"{k}: file {saved.get(k)!r} vs requested {v!r}" for k, v in mine.items() if saved.get(k) != v and k not in HEAD_FREE_FIELDS
        ]
        if diff:
            raise ValueError(
                f"the pre-fitted head {path} was made for another hash-grid layout ({'; '.join(diff)}); "
                "use the file's settings, pre-fit a head for these settings, or pass mci=None"
            )
        state = payload["state"]
        expected = set(self.head_state())
        if set(state) != expected:
            raise ValueError(f"{path} holds weights {sorted(state)}, expected {sorted(expected)}; the file is damaged, regenerate it")
        full = self.state_dict()
        full.update({k: v.to(full[k]) for k, v in state.items()})
        self.load_state_dict(full)
        return dict(payload.get("meta", {}))
