//! Tests of the network: ablations, streamed inference, padding, shapes, invariants.

use super::*;
use crate::model::ModelError;
use crate::model::{draw_patch_centres, param_counts};
use burn::tensor::{Device, Distribution, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// 16×16 images, 16 channels, levels with strides 1, 2, 4; max_div_factor 16.
fn tiny() -> NetworkConfig {
    NetworkConfig::new()
        .with_input_dim(256)
        .with_embd_dim(16)
        .with_fpn_dim(16)
        .with_head_dim(16)
        .with_n_head(2)
        .with_backbone_arch(vec![2, 1, 2])
        .with_regression_range(vec![[0.0, 4.0], [4.0, 8.0], [8.0, 10000.0]])
        .with_proj_hidden(32)
        .with_proj_dim(8)
}

/// Uniform features drawn on the host: the device's generator is shared by the tests that run
/// beside this one, so seeding it here would not make two calls agree.
fn inputs(b: usize, c: usize, t: usize, valid: usize, dev: &Device) -> (Tensor<3>, Tensor<2, Bool>) {
    use rand::RngExt;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v: Vec<f32> = (0..b * c * t).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let x = Tensor::<3>::from_data(TensorData::new(v, [b, c, t]), dev);
    let m: Vec<bool> = (0..b * t).map(|i| i % t < valid).collect();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(m, [b, t]), dev);
    let x = x * mask.clone().float().unsqueeze_dim::<3>(1);
    (x, mask)
}

fn all_finite<const D: usize>(t: &Tensor<D>) -> bool {
    t.clone().is_finite().all().into_scalar::<bool>()
}

#[test]
fn ablations_build_and_run() {
    let dev = Device::flex();
    let af = tiny()
        .with_sp_atten(false)
        .with_te_atten(false)
        .with_pretrain(false)
        .with_random_patch(false);
    let cases = [
        ("actionformer", af.clone()),
        ("sp_only", af.clone().with_sp_atten(true)),
        ("te_only", af.clone().with_te_atten(true)),
        ("patch_only", af.clone().with_random_patch(true)),
        ("no_self_atten", tiny().with_self_atten(false)),
        ("global_attention", tiny().with_n_mha_win_size(vec![-1])),
        (
            "no_ln_no_droppath",
            tiny()
                .with_embd_with_ln(false)
                .with_fpn_with_ln(false)
                .with_head_with_ln(false)
                .with_droppath(0.0),
        ),
        ("paper", tiny()),
    ];
    for (name, cfg) in cases {
        let net = cfg.init(&dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (x, mask) = inputs(2, 256, 32, 27, &dev);
        let centres = [(2, 12), (7, 5)];
        let out = net
            .forward(x, mask, Some(&centres))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.cls_logits.len(), 3, "{name}");
        for (l, s) in [1usize, 2, 4].iter().enumerate() {
            assert_eq!(out.cls_logits[l].dims(), [2, 32 / s, 2], "{name} level {l}");
            assert_eq!(out.offsets[l].dims(), [2, 32 / s, 2], "{name} level {l}");
            assert_eq!(out.masks[l].dims(), [2, 32 / s], "{name} level {l}");
            assert!(all_finite(&out.cls_logits[l]) && all_finite(&out.offsets[l]), "{name}");
        }
        assert_eq!(out.fg.is_some(), cfg.pretrain, "{name}");
        if let (Some(fg), Some(bg)) = (&out.fg, &out.bg) {
            assert_eq!(fg.dims(), [2, 8, 32]);
            assert_eq!(bg.dims(), [2, 8, 32]);
        }
        // Which blocks exist follows the flags.
        let blocks: Vec<String> = param_counts(&net).into_iter().map(|(b, _)| b).collect();
        assert_eq!(
            blocks.contains(&"long_term.convlstm".to_string()),
            cfg.te_atten,
            "{name}"
        );
        assert_eq!(
            blocks.contains(&"long_term.spatial".to_string()),
            cfg.sp_atten,
            "{name}"
        );
        assert_eq!(blocks.contains(&"stem".to_string()), cfg.self_atten, "{name}");
    }
}

#[test]
fn infer_gives_the_forward_detections_without_the_projections() {
    let dev = Device::flex();
    let net = tiny().init(&dev).expect("valid");
    let (x, mask) = inputs(2, 256, 32, 27, &dev);
    let centres = [(2, 12), (7, 5)];
    let full = net.forward(x.clone(), mask.clone(), Some(&centres)).expect("forward");
    let det = net.infer(x, mask, Some(&centres)).expect("infer");
    assert!(full.fg.is_some() && full.bg.is_some());
    assert!(det.fg.is_none() && det.bg.is_none());
    let flat = |v: Vec<Tensor<3>>| -> Vec<f32> {
        v.into_iter()
            .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            .collect()
    };
    assert_eq!(flat(full.cls_logits), flat(det.cls_logits));
    assert_eq!(flat(full.offsets), flat(det.offsets));
}

#[test]
fn streamed_inference_equals_the_whole_forward_for_any_chunk() {
    // Pieces of 1 frame (fewer than the embedding conv's halo), 5 and 13 (T = 64 is a
    // multiple of neither), 64 (one piece) and more than T; B = 2 with different valid
    // lengths, random patch on (its kernels come from the first piece); fused and
    // tensor-op ConvLSTM.
    let dev = Device::flex();
    let mut net = tiny().init(&dev).expect("valid");
    let (x, mask) = inputs(2, 256, 64, 50, &dev);
    let centres = [(2, 12), (7, 5)];
    let flat = |v: &[Tensor<3>]| -> Vec<f32> {
        v.iter()
            .flat_map(|t| t.clone().into_data().try_to_vec::<f32>().unwrap())
            .collect()
    };
    for fused in [true, false] {
        if let Some(l) = net.backbone.long_term.convlstm.as_mut() {
            l.fused = fused;
        }
        let full = net.forward(x.clone(), mask.clone(), Some(&centres)).expect("forward");
        let (want_cls, want_off) = (flat(&full.cls_logits), flat(&full.offsets));
        for chunk in [1, 5, 13, 64, 100] {
            let out = net
                .infer_chunked(x.clone(), mask.clone(), Some(&centres), chunk)
                .expect("infer");
            for (got, want, what) in [
                (flat(&out.cls_logits), &want_cls, "logits"),
                (flat(&out.offsets), &want_off, "offsets"),
            ] {
                assert_eq!(got.len(), want.len());
                let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(d < 1e-5, "fused {fused}, chunk {chunk}, {what}: {d}");
            }
            assert_eq!(out.masks.len(), full.masks.len());
        }
    }
    // Without the patch centres random patch cannot run.
    assert!(net.infer_chunked(x, mask, None, 8).is_err());
}

#[test]
fn valid_outputs_do_not_depend_on_padding() {
    // Paper flags (random patch included), reduced width, real 64×64 images.
    let dev = Device::flex();
    let cfg = NetworkConfig::new()
        .with_embd_dim(16)
        .with_fpn_dim(16)
        .with_head_dim(16)
        .with_proj_hidden(32)
        .with_proj_dim(8);
    let net = cfg.init(&dev).expect("valid");
    let valid = 100;
    let (x, _) = inputs(1, 4096, valid, valid, &dev);
    let run = |t: usize| {
        let pad = Tensor::<3>::zeros([1, 4096, t - valid], &dev);
        let xx = Tensor::cat(vec![x.clone(), pad], 2);
        let m: Vec<bool> = (0..t).map(|i| i < valid).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(m, [1, t]), &dev);
        net.forward(xx, mask, Some(&[(30, 40)])).expect("forward")
    };
    let (a, b) = (run(128), run(256));
    let lens = [100, 50, 25, 13, 7, 4];
    for (l, &n) in lens.iter().enumerate() {
        let va: Vec<bool> = a.masks[l].clone().into_data().try_to_vec().unwrap();
        assert_eq!(va.iter().filter(|&&v| v).count(), n);
        for (x, y) in [(&a.cls_logits[l], &b.cls_logits[l]), (&a.offsets[l], &b.offsets[l])] {
            let d = (x.clone().narrow(1, 0, n) - y.clone().narrow(1, 0, n))
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(d < 1e-4, "level {l}: {d}");
        }
    }
    let (fa, fb) = (a.fg.expect("fg"), b.fg.expect("fg"));
    let d = (fa.narrow(2, 0, valid) - fb.narrow(2, 0, valid))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(d < 1e-4, "fg: {d}");
}

#[test]
fn wrong_shapes_are_errors_naming_both() {
    let dev = Device::flex();
    let net = tiny().init(&dev).expect("valid");
    let (x, mask) = inputs(1, 255, 32, 32, &dev);
    let e = net.forward(x, mask, Some(&[(2, 2)])).expect_err("channels");
    let msg = e.to_string();
    assert!(msg.contains("C=256") && msg.contains("255"), "{msg}");
    let (x, mask) = inputs(1, 256, 24, 24, &dev);
    let e = net.forward(x, mask, Some(&[(2, 2)])).expect_err("length");
    assert!(e.to_string().contains("max_div_factor 16"), "{e}");
    let (x, _) = inputs(1, 256, 32, 32, &dev);
    let (_, mask) = inputs(2, 256, 32, 32, &dev);
    let e = net.forward(x, mask, Some(&[(2, 2)])).expect_err("mask");
    assert!(e.to_string().contains("mask"), "{e}");
    let (x, mask) = inputs(1, 256, 32, 32, &dev);
    assert!(matches!(
        net.forward(x, mask, None),
        Err(ModelError::PatchCentres { .. })
    ));
}

#[test]
fn broken_invariants_are_rejected_naming_the_yaml_key() {
    let field = |c: NetworkConfig| match c.check() {
        Err(ModelError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(field(NetworkConfig::new().with_input_dim(4000)), "dataset.input_dim");
    assert_eq!(field(NetworkConfig::new().with_sp_atten(false)), "model.pretrain");
    assert_eq!(
        field(NetworkConfig::new().with_regression_range(vec![[0.0, 4.0]])),
        "model.regression_range"
    );
    // fpn_start_level 1 leaves 5 output levels: the paper's 6 ranges are one too many.
    assert_eq!(
        field(NetworkConfig::new().with_fpn_start_level(1)),
        "model.regression_range"
    );
    assert_eq!(
        field(NetworkConfig::new().with_fpn_start_level(6)),
        "model.fpn_start_level"
    );
    assert_eq!(field(NetworkConfig::new().with_scale_factor(3)), "model.scale_factor");
    assert_eq!(field(NetworkConfig::new().with_n_head(3)), "model.n_head");
    assert_eq!(field(NetworkConfig::new().with_fpn_dim(256)), "model.fpn_dim");
    assert_eq!(
        field(NetworkConfig::new().with_n_mha_win_size(vec![4, 4])),
        "model.n_mha_win_size"
    );
    assert!(NetworkConfig::new().check().is_ok());
    // ActionFormer: any input_dim works when the input layer is off.
    assert!(
        NetworkConfig::new()
            .with_input_dim(2048)
            .with_sp_atten(false)
            .with_te_atten(false)
            .with_pretrain(false)
            .with_random_patch(false)
            .check()
            .is_ok()
    );
}

#[test]
fn a_later_start_level_builds_and_heads_see_only_the_coarser_levels() {
    // Backbone levels with strides 1, 2, 4; the heads see 2 and 4 (the original's
    // fpn_strides for fpn_start_level 1), one regression range each.
    let dev = Device::flex();
    let cfg = tiny()
        .with_fpn_start_level(1)
        .with_regression_range(vec![[0.0, 8.0], [8.0, 10000.0]]);
    assert_eq!(cfg.fpn_strides(), vec![2, 4]);
    assert_eq!(cfg.max_div_factor(), 16);
    let net = cfg.init(&dev).expect("valid");
    let (x, mask) = inputs(2, 256, 32, 27, &dev);
    let out = net.forward(x, mask, Some(&[(2, 12), (7, 5)])).expect("forward");
    assert_eq!(out.cls_logits.len(), 2);
    assert_eq!(out.cls_logits[0].dims(), [2, 16, 2]);
    assert_eq!(out.offsets[1].dims(), [2, 8, 2]);
    assert_eq!(out.masks[1].dims(), [2, 8]);
    let pts = net.points(32).rows();
    assert_eq!(pts.len(), 16 + 8);
    // [t, reg_min, reg_max, stride] of the first point of each level.
    assert_eq!(pts[0], [0.0, 0.0, 8.0, 2.0]);
    assert_eq!(pts[16], [0.0, 8.0, 10000.0, 4.0]);
}

#[test]
fn derived_values_of_the_paper_config() {
    let c = NetworkConfig::new();
    assert_eq!(c.fpn_strides(), vec![1, 2, 4, 8, 16, 32]);
    assert_eq!(c.max_div_factor(), 128);
    assert_eq!(c.num_levels(), 6);
    assert_eq!(c.image_side(), Some(64));
    assert_eq!(c.clone().with_n_mha_win_size(vec![-1]).max_div_factor(), 32);
    assert_eq!(c.with_n_mha_win_size(vec![9]).max_div_factor(), 256);
}

#[test]
fn patch_centres_are_seeded_and_in_range() {
    let a = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(5), 500, 64);
    let b = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(5), 500, 64);
    assert_eq!(a, b);
    assert!(a.iter().all(|&(r, c)| (2..=60).contains(&r) && (2..=60).contains(&c)));
    // Both ends are reachable.
    assert!(a.iter().any(|&(r, _)| r == 2) && a.iter().any(|&(r, _)| r == 60));
    let c = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(6), 500, 64);
    assert_ne!(a, c);
}

#[test]
fn paper_param_counts() {
    let dev = Device::flex();
    let net = NetworkConfig::new().init(&dev).expect("valid");
    let counts: std::collections::HashMap<String, usize> = param_counts(&net).into_iter().collect();
    // ConvLSTM: 4·8·(1+8)·9+32, 4·8·(8+8)·9+32, 4·1·(8+1)·9+4.
    assert_eq!(counts["long_term.convlstm"], 2624 + 4640 + 328);
    // conv 1→8, bn 8, conv 8→16, bn 16, conv 16→1 (running stats are not parameters).
    assert_eq!(counts["long_term.spatial"], 80 + 16 + 1168 + 32 + 17);
    assert_eq!(counts["long_term.projection"], 4096 * 1024 + 1024 + 1024 * 256 + 256);
    assert_eq!(counts["embedding"], 512 * 4096 * 3 + 512 * 512 * 3 + 4 * 512);
    // Transformer block: 3 depthwise k3 (no bias), 5 lns, 4 1×1 convs, MLP, 2 drop-path scales.
    let c = 512;
    let block = |k: usize| 3 * c * k + 5 * 2 * c + 4 * (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c) + 2 * c;
    assert_eq!(counts["stem"], 2 * block(3));
    assert_eq!(counts["branch"], 5 * block(3));
    assert_eq!(counts["neck"], 6 * 2 * c);
    let trunk = 2 * (c * c * 3) + 2 * 2 * c;
    assert_eq!(counts["cls_head"], trunk + 2 * c * 3 + 2);
    assert_eq!(counts["reg_head"], trunk + 2 * c * 3 + 2 + 6);
    assert_eq!(counts.len(), 9);
}

#[test]
fn drop_path_drops_whole_samples_only_in_training() {
    use crate::model::transformer::AffineDropPathConfig;
    use burn::module::Module;
    let dev = Device::flex().autodiff();
    dev.seed(11);
    let dp = AffineDropPathConfig::new(4, 0.5).init(&dev);
    let x = Tensor::<3>::ones([64, 4, 3], &dev);
    let y: Vec<f32> = dp.forward(x.clone()).into_data().try_to_vec().unwrap();
    // Each sample is all 0 or all 1e-4 / 0.5.
    let per: Vec<f32> = y.chunks(12).map(|s| s[0]).collect();
    for (s, chunk) in per.iter().zip(y.chunks(12)) {
        assert!(chunk.iter().all(|v| v == s));
        assert!(*s == 0.0 || (s - 2e-4).abs() < 1e-9, "{s}");
    }
    let dropped = per.iter().filter(|&&s| s == 0.0).count();
    assert!((10..=54).contains(&dropped), "{dropped} of 64 dropped");
    // Eval: only the scale.
    let e: Vec<f32> = dp.valid().forward(x.clone()).into_data().try_to_vec().unwrap();
    assert!(e.iter().all(|&v| (v - 1e-4).abs() < 1e-10));
}

#[test]
fn same_seed_same_random_patch_output() {
    let dev = Device::flex();
    let net = tiny().init(&dev).expect("valid");
    let run = |seed: u64| {
        let centres = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(seed), 1, 16);
        let (x, mask) = inputs(1, 256, 32, 32, &dev);
        let o = net.forward(x, mask, Some(&centres)).expect("forward");
        o.cls_logits[0].clone().into_data().try_to_vec::<f32>().unwrap()
    };
    assert_eq!(run(1), run(1));
    // The centres do reach the output: other centres, other logits.
    assert_ne!(run(1), run(2));
}

#[test]
fn projecting_chosen_rows_equals_gathering_every_step() {
    // Training projects only the contrastive anchors' steps (`Project::Rows`): the rows and
    // the gradients they send back must be those of projecting every step and gathering.
    use crate::model::long_term::Project;
    let dev = Device::flex().autodiff();
    dev.seed(21);
    let net = tiny().init(&dev).expect("valid");
    let (b, t) = (2, 16);
    let centres = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(4), b, 16);
    let (x, mask) = inputs(b, 256, t, t, &dev);
    let (fg_rows, bg_rows) = ([3usize, 17, 30], [4usize, 17, 2]);
    let weights = |seed: u64| {
        dev.seed(seed);
        Tensor::<2>::random([3, 8], Distribution::Uniform(-1.0, 1.0), &dev)
    };
    let (wf, wb) = (weights(5), weights(6));
    let pick = |y: Tensor<3>, rows: &[usize]| {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(idx, [3]), &dev);
        y.swap_dims(1, 2).reshape([b * t, 8]).select(0, idx)
    };
    let all = net.forward(x.clone(), mask.clone(), Some(&centres)).expect("forward");
    let (u_all, d_all) = (pick(all.fg.expect("fg"), &fg_rows), pick(all.bg.expect("bg"), &bg_rows));
    let rows = net
        .forward_projecting(
            x.clone(),
            mask.clone(),
            Some(&centres),
            Project::Rows {
                fg: &fg_rows,
                bg: &bg_rows,
            },
        )
        .expect("forward");
    assert!(rows.fg.is_none() && rows.bg.is_none());
    let (u, d) = (rows.fg_rows.expect("fg rows"), rows.bg_rows.expect("bg rows"));
    assert_eq!(u.dims(), [3, 8]);
    let close = |p: Tensor<2>, q: Tensor<2>, what: &str| {
        let scale = q.clone().abs().max().into_scalar::<f32>();
        let diff = (p - q).abs().max().into_scalar::<f32>();
        assert!(scale > 0.0 && diff <= 1e-6 * scale, "{what}: {diff} of {scale}");
    };
    close(u.clone(), u_all.clone(), "fg");
    close(d.clone(), d_all.clone(), "bg");
    // A loss on the rows only: the projection's and the spatial stack's gradients agree.
    let loss = |u: Tensor<2>, d: Tensor<2>| (u * wf.clone()).sum() + (d * wb.clone()).sum();
    let g_all = loss(u_all, d_all).backward();
    let g_rows = loss(u, d).backward();
    fn agree<const D: usize>(w: Tensor<D>, a: &burn::tensor::Gradients, r: &burn::tensor::Gradients, what: &str) {
        let (ga, gr) = (w.grad(a).expect("grad"), w.grad(r).expect("grad"));
        let scale = ga.clone().abs().max().into_scalar::<f32>();
        let diff = (ga - gr).abs().max().into_scalar::<f32>();
        assert!(scale > 0.0 && diff <= 1e-5 * scale, "{what}: {diff} of {scale}");
    }
    let lt = &net.backbone.long_term;
    let fc1 = lt.projection.as_ref().expect("projection").fc1.weight.val();
    agree(fc1, &g_all, &g_rows, "projection fc1");
    let conv1 = lt.spatial.as_ref().expect("spatial").conv1.weight.val();
    agree(conv1, &g_all, &g_rows, "spatial conv1");
    // Skip projects nothing; rows outside the batch and unequal counts are errors.
    let skip = net
        .forward_projecting(x.clone(), mask.clone(), Some(&centres), Project::Skip)
        .expect("forward");
    assert!(skip.fg.is_none() && skip.fg_rows.is_none() && skip.bg_rows.is_none());
    for (f, g) in [(&[32usize][..], &[0usize][..]), (&[1, 2][..], &[1][..])] {
        let err = net
            .forward_projecting(x.clone(), mask.clone(), Some(&centres), Project::Rows { fg: f, bg: g })
            .expect_err("bad rows");
        assert!(err.to_string().contains("projected rows"), "{err}");
    }
}
