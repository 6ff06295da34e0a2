//! The convolution path of the extractors: NHWC tensors on candle, with the few kernels
//! candle's CPU backend lacks or runs slowly written here as candle custom ops.
//!
//! Layout choice: activations are `(N, H, W, C)` contiguous f32. A 1x1 convolution is then
//! one matrix product `(N*H*W, Cin) x (Cin, Cout)` on candle's gemm with no copy; a k x k
//! convolution is an NHWC im2col (each copied run is a whole channel vector) followed by
//! the same product; batch-norm is folded into the weights at load time, and bias,
//! activation and residual additions are fused in place into one pass over the output.
//! Depthwise convolution and max-pooling are direct kernels vectorised across channels.
//!
//! Owns: the numeric kernels. Must not: know about models, files or DNAs.

use candle_core::{
    bail, CpuStorage, CustomOp1, DType, Device, InplaceOp1, InplaceOp2, Layout, Result, Shape,
    Tensor,
};
use rayon::prelude::*;

/// Activation applied after a convolution (fused with its bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Act::None => x,
            Act::Relu => x.max(0.0),
            Act::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// Explicit zero padding `(top, left, bottom, right)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pad {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Pad {
    pub const ZERO: Pad = Pad::same(0);

    /// The same padding on every side (PyTorch's `padding=p`).
    pub const fn same(p: usize) -> Pad {
        Pad {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }

    /// TensorFlow's SAME padding for a square input of side `size`: the output has
    /// `ceil(size / stride)` positions and any odd extra pixel goes to the bottom / right.
    pub fn tf_same(size: usize, k: usize, stride: usize) -> Pad {
        let out = size.div_ceil(stride);
        let total = ((out - 1) * stride + k).saturating_sub(size);
        Pad {
            top: total / 2,
            left: total / 2,
            bottom: total - total / 2,
            right: total - total / 2,
        }
    }

    fn out_size(&self, h: usize, w: usize, k: usize, stride: usize) -> Result<(usize, usize)> {
        self.out_size2(h, w, k, k, stride)
    }

    /// Output size of a `kh x kw` window.
    fn out_size2(
        &self,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
    ) -> Result<(usize, usize)> {
        let (ph, pw) = (h + self.top + self.bottom, w + self.left + self.right);
        if ph < kh || pw < kw || stride == 0 {
            bail!("input {h}x{w} too small for a {kh}x{kw} window")
        }
        Ok(((ph - kh) / stride + 1, (pw - kw) / stride + 1))
    }

    /// PyTorch's `padding=(ph, pw)`: `ph` rows above and below, `pw` columns each side.
    pub const fn hw(ph: usize, pw: usize) -> Pad {
        Pad {
            top: ph,
            left: pw,
            bottom: ph,
            right: pw,
        }
    }
}

/// The contiguous f32 slice of a CPU storage, or an error naming the op.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expected f32 input")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expected f32 input")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

fn nhwc(l: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    match l.shape().dims() {
        &[n, h, w, c] => Ok((n, h, w, c)),
        d => bail!("{op}: expected an NHWC tensor, got shape {d:?}"),
    }
}

/// im2col for NHWC input: `(N, H, W, C)` to `(N*Ho*Wo, kh*kw*C)`, columns ordered
/// `(ky, kx, c)`, zeros where the window leaves the padded input.
struct Im2Col {
    kh: usize,
    kw: usize,
    stride: usize,
    pad: Pad,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, h, w, c) = nhwc(l, self.name())?;
        let (kh, kw, st, pad) = (self.kh, self.kw, self.stride, self.pad);
        let (ho, wo) = pad.out_size2(h, w, kh, kw, st)?;
        let cols = kh * kw * c;
        let mut out = vec![0f32; n * ho * wo * cols];
        // One task per output row of one image: wo * cols floats.
        out.par_chunks_mut(wo * cols)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, oy) = (row / ho, row % ho);
                let img = &x[b * h * w * c..(b + 1) * h * w * c];
                for ox in 0..wo {
                    let d = &mut dst[ox * cols..(ox + 1) * cols];
                    // The in-bounds taps of one kernel row are adjacent in NHWC: one copy.
                    let x0 = (ox * st) as isize - pad.left as isize;
                    let kx_lo = (-x0).max(0) as usize;
                    let kx_hi = ((w as isize - x0).min(kw as isize)).max(0) as usize;
                    if kx_lo >= kx_hi {
                        continue;
                    }
                    let ix_lo = (x0 + kx_lo as isize) as usize;
                    let span = (kx_hi - kx_lo) * c;
                    for ky in 0..kh {
                        let iy = (oy * st + ky) as isize - pad.top as isize;
                        if iy < 0 || iy >= h as isize {
                            continue; // stays zero
                        }
                        let src = &img[(iy as usize * w + ix_lo) * c..][..span];
                        let o = (ky * kw + kx_lo) * c;
                        d[o..o + span].copy_from_slice(src);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n * ho * wo, cols))))
    }
}

/// Adds a per-channel bias and applies an activation, in place, over a `(rows, C)` tensor.
struct BiasAct<'a> {
    bias: &'a [f32],
    act: Act,
}

impl InplaceOp1 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let x = f32_slice_mut(s, l, "bias-act")?;
        let c = self.bias.len();
        if c == 0 || x.len() % c != 0 {
            bail!(
                "bias-act: {} values do not split into {c} channels",
                x.len()
            )
        }
        let (bias, act) = (self.bias, self.act);
        x.par_chunks_mut(c * 64.max(4096 / c)).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(c) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = act.apply(*v + b);
                }
            }
        });
        Ok(())
    }
}

/// `x = act(x + bias + y)` in place: a convolution's bias, a residual connection and the
/// activation in one pass over the output.
struct BiasAddAct<'a> {
    bias: &'a [f32],
    act: Act,
}

impl InplaceOp2 for BiasAddAct<'_> {
    fn name(&self) -> &'static str {
        "bias-add-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let y = f32_slice(s2, l2, "bias-add-act")?;
        let x = f32_slice_mut(s1, l1, "bias-add-act")?;
        let c = self.bias.len();
        if x.len() != y.len() || c == 0 || x.len() % c != 0 {
            bail!(
                "bias-add-act: shapes differ ({} vs {} values, {c} channels)",
                x.len(),
                y.len()
            )
        }
        let (bias, act) = (self.bias, self.act);
        let chunk = c * 64.max(4096 / c);
        x.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk))
            .for_each(|(a, b)| {
                for (ra, rb) in a.chunks_exact_mut(c).zip(b.chunks_exact(c)) {
                    for ((u, v), bi) in ra.iter_mut().zip(rb).zip(bias) {
                        *u = act.apply(*u + bi + v);
                    }
                }
            });
        Ok(())
    }
}

/// A 3x3, stride-1, pad-1 convolution over NHWC without im2col: the input is copied once
/// into a zero-bordered buffer, and each of the 9 taps is one accumulating matrix product
/// whose left operand is that buffer shifted by the tap's offset (rows of the padded width
/// whose window crosses a border land in two discarded columns per row). Bias and
/// activation are fused into the final compaction.
struct Shifted3x3<'a> {
    weight: &'a Tensor,
    cin: usize,
    cout: usize,
    bias: &'a [f32],
    act: Act,
}

impl CustomOp1 for Shifted3x3<'_> {
    fn name(&self) -> &'static str {
        "conv3x3-shifted"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, h, w, c) = nhwc(l, self.name())?;
        let (cin, cout) = (self.cin, self.cout);
        if c != cin || self.bias.len() != cout {
            bail!("conv3x3: expected {cin} input channels, got {c}")
        }
        let (hp, wp) = (h + 2, w + 2);
        let plane = hp * wp;
        let mut xp = vec![0f32; n * plane * c];
        xp.par_chunks_mut(plane * c)
            .enumerate()
            .for_each(|(b, img)| {
                for y in 0..h {
                    img[((y + 1) * wp + 1) * c..][..w * c]
                        .copy_from_slice(&x[(b * h + y) * w * c..][..w * c]);
                }
            });
        // Output row p (padded coordinates) reads input rows p + ky*wp + kx; the last valid
        // output is row rows - 1.
        let rows = n * plane - (2 * wp + 2);
        let mut yp = vec![0f32; rows * cout];
        with_values(self.weight, |wv| {
            if wv.len() != 9 * cin * cout {
                return;
            }
            for t in 0..9 {
                let off = (t / 3) * wp + t % 3;
                // SAFETY: dst holds rows x cout values; lhs reads rows x cin values from
                // offset `off`, and off + rows = n * plane - (2*wp + 2) + off <= n * plane
                // because off <= 2*wp + 2; rhs is tap t's cin x cout block of the weights.
                unsafe {
                    gemm::gemm(
                        rows,
                        cout,
                        cin,
                        yp.as_mut_ptr(),
                        1,
                        cout as isize,
                        t > 0,
                        xp.as_ptr().add(off * cin),
                        1,
                        cin as isize,
                        wv.as_ptr().add(t * cin * cout),
                        1,
                        cout as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(rayon::current_num_threads()),
                    );
                }
            }
        })?;
        drop(xp);
        let mut out = vec![0f32; n * h * w * cout];
        let (bias, act) = (self.bias, self.act);
        out.par_chunks_mut(w * cout)
            .enumerate()
            .for_each(|(r, dst)| {
                let (b, y) = (r / h, r % h);
                let src = &yp[(b * plane + y * wp) * cout..][..w * cout];
                for (ds, ss) in dst.chunks_exact_mut(cout).zip(src.chunks_exact(cout)) {
                    for ((o, v), bi) in ds.iter_mut().zip(ss).zip(bias) {
                        *o = act.apply(v + bi);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, cout))))
    }
}

/// `x = act(x + y)` in place (residual connections).
struct AddAct {
    act: Act,
}

impl InplaceOp2 for AddAct {
    fn name(&self) -> &'static str {
        "add-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let y = f32_slice(s2, l2, "add-act")?;
        let x = f32_slice_mut(s1, l1, "add-act")?;
        if x.len() != y.len() {
            bail!("add-act: shapes differ ({} vs {} values)", x.len(), y.len())
        }
        let act = self.act;
        x.par_chunks_mut(1 << 14)
            .zip(y.par_chunks(1 << 14))
            .for_each(|(a, b)| {
                for (u, v) in a.iter_mut().zip(b) {
                    *u = act.apply(*u + v);
                }
            });
        Ok(())
    }
}

/// Depthwise k x k convolution over NHWC with bias and activation fused.
struct Depthwise<'a> {
    k: usize,
    stride: usize,
    pad: Pad,
    /// `(ky, kx, c)` order.
    weight: &'a [f32],
    bias: &'a [f32],
    act: Act,
}

impl CustomOp1 for Depthwise<'_> {
    fn name(&self) -> &'static str {
        "depthwise-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, h, w, c) = nhwc(l, self.name())?;
        let (k, st, pad) = (self.k, self.stride, self.pad);
        if self.weight.len() != k * k * c || self.bias.len() != c {
            bail!("depthwise: weights do not match {c} channels")
        }
        let (ho, wo) = pad.out_size(h, w, k, st)?;
        let mut out = vec![0f32; n * ho * wo * c];
        out.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, oy) = (row / ho, row % ho);
                let img = &x[b * h * w * c..(b + 1) * h * w * c];
                for ox in 0..wo {
                    let d = &mut dst[ox * c..(ox + 1) * c];
                    d.copy_from_slice(self.bias);
                    for ky in 0..k {
                        let iy = (oy * st + ky) as isize - pad.top as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * st + kx) as isize - pad.left as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let src = &img[(iy as usize * w + ix as usize) * c..][..c];
                            let wt = &self.weight[(ky * k + kx) * c..][..c];
                            for ((o, a), b) in d.iter_mut().zip(src).zip(wt) {
                                *o += a * b;
                            }
                        }
                    }
                    for o in d.iter_mut() {
                        *o = self.act.apply(*o);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, ho, wo, c))))
    }
}

/// How a pooling window reduces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// The maximum; padded positions never win (PyTorch semantics, NaN propagates).
    Max,
    /// The mean over in-bounds positions (PyTorch's `count_include_pad=False`).
    Avg,
}

/// k x k pooling over NHWC with symmetric padding.
struct Pool {
    kind: PoolKind,
    k: usize,
    stride: usize,
    pad: usize,
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "maxpool-nhwc",
            PoolKind::Avg => "avgpool-nhwc",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, h, w, c) = nhwc(l, self.name())?;
        let (k, st, p) = (self.k, self.stride, self.pad);
        let (ho, wo) = Pad::same(p).out_size(h, w, k, st)?;
        let init = match self.kind {
            PoolKind::Max => f32::NEG_INFINITY,
            PoolKind::Avg => 0.0,
        };
        let mut out = vec![init; n * ho * wo * c];
        out.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, oy) = (row / ho, row % ho);
                let img = &x[b * h * w * c..(b + 1) * h * w * c];
                for ox in 0..wo {
                    let d = &mut dst[ox * c..(ox + 1) * c];
                    let mut count = 0usize;
                    for ky in 0..k {
                        let iy = (oy * st + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * st + kx) as isize - p as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            count += 1;
                            let src = &img[(iy as usize * w + ix as usize) * c..][..c];
                            match self.kind {
                                PoolKind::Max => {
                                    for (o, a) in d.iter_mut().zip(src) {
                                        if *a > *o || a.is_nan() {
                                            *o = *a;
                                        }
                                    }
                                }
                                PoolKind::Avg => {
                                    for (o, a) in d.iter_mut().zip(src) {
                                        *o += a;
                                    }
                                }
                            }
                        }
                    }
                    if self.kind == PoolKind::Avg {
                        let inv = 1.0 / count.max(1) as f32;
                        for o in d.iter_mut() {
                            *o *= inv;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, ho, wo, c))))
    }
}

/// A convolution with batch-norm folded in: `weight` is `(k*kw*Cin, Cout)` for the gemm,
/// rows ordered `(ky, kx, cin)` like the im2col columns.
pub struct Conv {
    /// Kernel rows (and columns when square).
    pub k: usize,
    /// Kernel columns.
    pub kw: usize,
    pub stride: usize,
    pub cin: usize,
    pub cout: usize,
    pub weight: Tensor,
    pub bias: Vec<f32>,
}

impl Conv {
    /// Folds an inference-mode batch-norm into a bias-free convolution, in f64:
    /// `w' = w * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)`.
    /// `w` is PyTorch's `(Cout, Cin, k, k)` layout.
    pub fn fold(w: &[f32], dims: [usize; 4], bn: &BatchNorm, stride: usize) -> Result<Conv> {
        let [cout, cin, kh, kw] = dims;
        if w.len() != cout * cin * kh * kw || bn.len() != cout {
            bail!(
                "conv {dims:?} does not match its batch-norm of {} channels",
                bn.len()
            )
        }
        let (scale, bias) = bn.scale_shift();
        let mut g = vec![0f32; kh * kw * cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let v = w[((o * cin + i) * kh + ky) * kw + kx] as f64 * scale[o];
                        g[((ky * kw + kx) * cin + i) * cout + o] = v as f32;
                    }
                }
            }
        }
        Ok(Conv {
            k: kh,
            kw,
            stride,
            cin,
            cout,
            weight: Tensor::from_vec(g, (kh * kw * cin, cout), &Device::Cpu)?,
            bias: bias.iter().map(|&b| b as f32).collect(),
        })
    }

    /// A convolution with its own bias and no batch-norm (PyTorch `(Cout, Cin, k, k)`
    /// weight): the fold with an identity normalisation, which leaves every value exact.
    pub fn with_bias(
        w: &[f32],
        dims: [usize; 4],
        bias: Option<Vec<f32>>,
        stride: usize,
    ) -> Result<Conv> {
        let c = dims[0];
        let bn = BatchNorm {
            gamma: vec![1.0; c],
            beta: bias.unwrap_or_else(|| vec![0.0; c]),
            mean: vec![0.0; c],
            var: vec![1.0; c],
            eps: 0.0,
        };
        Conv::fold(w, dims, &bn, stride)
    }

    /// Runs the convolution on an NHWC tensor and applies `act`.
    pub fn forward(&self, x: &Tensor, pad: Pad, act: Act) -> Result<Tensor> {
        self.forward_residual(x, pad, None, act)
    }

    /// `act(conv(x) + residual)`, the addition fused with the bias.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        pad: Pad,
        residual: Option<&Tensor>,
        act: Act,
    ) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        if c != self.cin {
            bail!("conv expects {} input channels, got {c}", self.cin)
        }
        // Shifted products beat im2col while the discarded border columns stay few.
        if self.k == 3
            && self.kw == 3
            && self.stride == 1
            && pad == Pad::same(1)
            && residual.is_none()
            && (h + 2) * (w + 2) * 4 <= h * w * 5
        {
            return x.apply_op1_no_bwd(&Shifted3x3 {
                weight: &self.weight,
                cin: self.cin,
                cout: self.cout,
                bias: &self.bias,
                act,
            });
        }
        let (ho, wo) = pad.out_size2(h, w, self.k, self.kw, self.stride)?;
        let cols = if self.k == 1 && self.kw == 1 && self.stride == 1 && pad == Pad::ZERO {
            x.reshape((n * h * w, c))?
        } else {
            x.apply_op1_no_bwd(&Im2Col {
                kh: self.k,
                kw: self.kw,
                stride: self.stride,
                pad,
            })?
        };
        let y = cols.matmul(&self.weight)?;
        match residual {
            Some(r) => {
                if r.dims() != [n, ho, wo, self.cout] {
                    bail!(
                        "residual shape {:?} does not match the conv output",
                        r.dims()
                    )
                }
                y.inplace_op2(
                    &r.reshape((n * ho * wo, self.cout))?,
                    &BiasAddAct {
                        bias: &self.bias,
                        act,
                    },
                )?
            }
            None => y.inplace_op1(&BiasAct {
                bias: &self.bias,
                act,
            })?,
        }
        y.reshape((n, ho, wo, self.cout))
    }
}

/// A depthwise convolution with batch-norm folded in.
pub struct DepthwiseConv {
    pub k: usize,
    pub stride: usize,
    pub channels: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl DepthwiseConv {
    /// `w` is PyTorch's `(C, 1, k, k)` layout.
    pub fn fold(w: &[f32], dims: [usize; 4], bn: &BatchNorm, stride: usize) -> Result<Self> {
        let [c, one, kh, kw] = dims;
        if one != 1 || kh != kw || w.len() != c * kh * kw || bn.len() != c {
            bail!("depthwise conv {dims:?} does not match its batch-norm")
        }
        let k = kh;
        let (scale, bias) = bn.scale_shift();
        let mut g = vec![0f32; k * k * c];
        for ch in 0..c {
            for t in 0..k * k {
                g[t * c + ch] = (w[ch * k * k + t] as f64 * scale[ch]) as f32;
            }
        }
        Ok(DepthwiseConv {
            k,
            stride,
            channels: c,
            weight: g,
            bias: bias.iter().map(|&b| b as f32).collect(),
        })
    }

    pub fn forward(&self, x: &Tensor, pad: Pad, act: Act) -> Result<Tensor> {
        x.apply_op1_no_bwd(&Depthwise {
            k: self.k,
            stride: self.stride,
            pad,
            weight: &self.weight,
            bias: &self.bias,
            act,
        })
    }
}

/// Inference-mode batch-norm parameters.
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f64,
}

impl BatchNorm {
    pub fn len(&self) -> usize {
        self.gamma.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gamma.is_empty()
    }

    /// `(scale, shift)` per channel, in f64.
    fn scale_shift(&self) -> (Vec<f64>, Vec<f64>) {
        let scale: Vec<f64> = (0..self.len())
            .map(|i| self.gamma[i] as f64 / (self.var[i] as f64 + self.eps).sqrt())
            .collect();
        let shift = (0..self.len())
            .map(|i| self.beta[i] as f64 - self.mean[i] as f64 * scale[i])
            .collect();
        (scale, shift)
    }
}

/// k x k average pooling, padding excluded from the counts (`count_include_pad=False`).
pub fn avg_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Pool {
        kind: PoolKind::Avg,
        k,
        stride,
        pad,
    })
}

/// `x = act(x + y)` in place; both NHWC of one shape.
pub fn add_act(x: &Tensor, y: &Tensor, act: Act) -> Result<()> {
    if x.dims() != y.dims() {
        bail!("residual shapes differ: {:?} vs {:?}", x.dims(), y.dims())
    }
    x.inplace_op2(y, &AddAct { act })
}

/// k x k max-pooling with stride and symmetric padding.
pub fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Pool {
        kind: PoolKind::Max,
        k,
        stride,
        pad,
    })
}

/// Mean over the spatial positions: `(N, H, W, C)` to `(N, C)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h * w, c))?.to_dtype(DType::F32)?.mean(1)
}

/// Keeps freed large buffers in the process heap instead of returning them to the OS
/// (glibc): every batch allocates the same activation sizes again, and fresh pages cost a
/// fault and a zeroing each, which measured up to 3x slower on memory-bound products.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; it is called once, before
            // the extraction allocates its buffers.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}

/// Borrows a contiguous f32 CPU tensor's values and hands them to `f`.
pub fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => Ok(f(f32_slice(s, layout, "read")?)),
        _ => bail!("activations must be on the CPU to be accumulated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct NCHW convolution with f64 sums: the independent oracle for im2col + gemm.
    fn conv_direct(
        x: &[f32],
        (n, h, w, c): (usize, usize, usize, usize),
        wt: &[f32],
        cout: usize,
        k: usize,
        st: usize,
        pad: Pad,
    ) -> Vec<f64> {
        let (ho, wo) = pad.out_size(h, w, k, st).unwrap();
        let mut out = vec![0f64; n * ho * wo * cout];
        for b in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for o in 0..cout {
                        let mut s = 0f64;
                        for i in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * st + ky) as isize - pad.top as isize;
                                    let ix = (ox * st + kx) as isize - pad.left as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * h + iy as usize) * w + ix as usize) * c + i];
                                    s += xv as f64 * wt[((o * c + i) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        out[((b * ho + oy) * wo + ox) * cout + o] = s;
                    }
                }
            }
        }
        out
    }

    fn seq(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| (r.f64() * 2.0 - 1.0) as f32).collect()
    }

    fn identity_bn(c: usize) -> BatchNorm {
        BatchNorm {
            gamma: vec![1.0; c],
            beta: vec![0.0; c],
            mean: vec![0.0; c],
            var: vec![1.0; c],
            eps: 0.0,
        }
    }

    #[test]
    fn conv_matches_direct_computation_for_odd_shapes_strides_and_pads() {
        for &(k, st, pad, h, w) in &[
            (3, 1, Pad::same(1), 7, 5),
            (3, 1, Pad::same(1), 18, 18),
            (3, 1, Pad::same(1), 20, 19),
            (3, 2, Pad::tf_same(8, 3, 2), 8, 8),
            (5, 2, Pad::tf_same(9, 5, 2), 9, 9),
            (7, 2, Pad::same(3), 11, 10),
            (1, 2, Pad::ZERO, 6, 6),
            (1, 1, Pad::ZERO, 3, 4),
        ] {
            let (n, c, cout) = (2, 3, 4);
            let x = seq(n * h * w * c, 1);
            let wt = seq(cout * c * k * k, 2);
            let conv = Conv::fold(&wt, [cout, c, k, k], &identity_bn(cout), st).unwrap();
            let xt = Tensor::from_vec(x.clone(), (n, h, w, c), &Device::Cpu).unwrap();
            let y = conv.forward(&xt, pad, Act::None).unwrap();
            let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = conv_direct(&x, (n, h, w, c), &wt, cout, k, st, pad);
            assert_eq!(got.len(), want.len(), "k={k} st={st}");
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "k={k} st={st}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn rectangular_kernels_match_direct_computation() {
        let (n, h, w, c, cout) = (2, 6, 5, 3, 4);
        let x = seq(n * h * w * c, 11);
        for (kh, kw, pad) in [
            (1, 7, Pad::hw(0, 3)),
            (7, 1, Pad::hw(3, 0)),
            (3, 1, Pad::hw(1, 0)),
        ] {
            let wt = seq(cout * c * kh * kw, 12);
            let conv = Conv::fold(&wt, [cout, c, kh, kw], &identity_bn(cout), 1).unwrap();
            let xt = Tensor::from_vec(x.clone(), (n, h, w, c), &Device::Cpu).unwrap();
            let y = conv.forward(&xt, pad, Act::None).unwrap();
            assert_eq!(y.dims(), &[n, h, w, cout]);
            let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for b in 0..n {
                for oy in 0..h {
                    for ox in 0..w {
                        for o in 0..cout {
                            let mut s = 0f64;
                            for i in 0..c {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy + ky) as isize - pad.top as isize;
                                        let ix = (ox + kx) as isize - pad.left as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let xv =
                                            x[((b * h + iy as usize) * w + ix as usize) * c + i];
                                        let wv = wt[((o * c + i) * kh + ky) * kw + kx];
                                        s += xv as f64 * wv as f64;
                                    }
                                }
                            }
                            let g = got[((b * h + oy) * w + ox) * cout + o] as f64;
                            assert!((g - s).abs() < 1e-5, "{kh}x{kw}: {g} vs {s}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avg_pool_divides_by_the_in_bounds_positions_only() {
        let x: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let xt = Tensor::from_vec(x, (1, 3, 3, 1), &Device::Cpu).unwrap();
        let y = avg_pool(&xt, 3, 1, 1).unwrap();
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Corner (0,0): mean of 0, 1, 3, 4; centre: mean of all nine.
        assert_eq!(got[0], 2.0);
        assert_eq!(got[4], 4.0);
        assert_eq!(got[1], (0.0 + 1.0 + 2.0 + 3.0 + 4.0 + 5.0) / 6.0);
    }

    #[test]
    fn fused_residual_equals_a_separate_addition() {
        let (n, h, w, c, cout) = (2, 4, 4, 8, 8);
        let x = Tensor::from_vec(seq(n * h * w * c, 7), (n, h, w, c), &Device::Cpu).unwrap();
        let r = Tensor::from_vec(seq(n * h * w * cout, 8), (n, h, w, cout), &Device::Cpu).unwrap();
        let wt = seq(cout * c, 9);
        let conv = Conv::fold(&wt, [cout, c, 1, 1], &identity_bn(cout), 1).unwrap();
        let fused = conv
            .forward_residual(&x, Pad::ZERO, Some(&r), Act::Relu)
            .unwrap();
        let plain = conv.forward(&x, Pad::ZERO, Act::None).unwrap();
        add_act(&plain, &r, Act::Relu).unwrap();
        let a = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn batch_norm_folding_matches_normalising_after_the_conv() {
        let (n, h, w, c, cout, k) = (1, 5, 5, 2, 3, 3);
        let x = seq(n * h * w * c, 3);
        let wt = seq(cout * c * k * k, 4);
        let bn = BatchNorm {
            gamma: vec![0.5, 2.0, -1.0],
            beta: vec![0.1, -0.2, 0.3],
            mean: vec![0.05, 0.5, -0.25],
            var: vec![0.9, 1.5, 0.01],
            eps: 1e-3,
        };
        let conv = Conv::fold(&wt, [cout, c, k, k], &bn, 1).unwrap();
        let xt = Tensor::from_vec(x.clone(), (n, h, w, c), &Device::Cpu).unwrap();
        let got = conv.forward(&xt, Pad::same(1), Act::Relu6).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let raw = conv_direct(&x, (n, h, w, c), &wt, cout, k, 1, Pad::same(1));
        for (i, r) in raw.iter().enumerate() {
            let o = i % cout;
            let bnv = (r - bn.mean[o] as f64) / (bn.var[o] as f64 + bn.eps).sqrt()
                * bn.gamma[o] as f64
                + bn.beta[o] as f64;
            let want = bnv.clamp(0.0, 6.0);
            assert!((got[i] as f64 - want).abs() < 1e-5, "{} vs {want}", got[i]);
        }
    }

    #[test]
    fn depthwise_matches_a_grouped_direct_convolution() {
        let (n, h, w, c, k) = (2, 9, 9, 5, 5);
        let x = seq(n * h * w * c, 5);
        let wt = seq(c * k * k, 6);
        for st in [1, 2] {
            let pad = Pad::tf_same(h, k, st);
            let dw = DepthwiseConv::fold(&wt, [c, 1, k, k], &identity_bn(c), st).unwrap();
            let xt = Tensor::from_vec(x.clone(), (n, h, w, c), &Device::Cpu).unwrap();
            let got = dw.forward(&xt, pad, Act::None).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Each channel alone is a 1-in, 1-out convolution.
            for ch in 0..c {
                let xc: Vec<f32> = x.iter().skip(ch).step_by(c).copied().collect();
                let wc = &wt[ch * k * k..(ch + 1) * k * k];
                let want = conv_direct(&xc, (n, h, w, 1), wc, 1, k, st, pad);
                for (i, wv) in want.iter().enumerate() {
                    assert!((got[i * c + ch] as f64 - wv).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn max_pool_ignores_padding_even_when_everything_is_negative() {
        let x: Vec<f32> = (0..16).map(|i| -(i as f32) - 1.0).collect();
        let xt = Tensor::from_vec(x, (1, 4, 4, 1), &Device::Cpu).unwrap();
        let y = max_pool(&xt, 3, 2, 1).unwrap();
        assert_eq!(y.dims(), &[1, 2, 2, 1]);
        // Windows: rows/cols {0,1} -> -1; {0,1}x{1,2,3} -> -2; {1,2,3}x{0,1} -> -5; -> -6.
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, vec![-1.0, -2.0, -5.0, -6.0]);
    }

    #[test]
    fn tf_same_padding_puts_the_extra_pixel_bottom_right() {
        assert_eq!(
            Pad::tf_same(224, 3, 2),
            Pad {
                top: 0,
                left: 0,
                bottom: 1,
                right: 1
            }
        );
        assert_eq!(
            Pad::tf_same(56, 5, 2),
            Pad {
                top: 1,
                left: 1,
                bottom: 2,
                right: 2
            }
        );
        assert_eq!(Pad::tf_same(14, 5, 1), Pad::same(2));
    }
}
