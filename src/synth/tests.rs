//! Whole-video properties of the generator.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::*;

/// Small videos so that the tests stay fast.
fn tiny(seed: u64) -> SynthConfig {
    SynthConfig {
        train: 2,
        val: 1,
        test: 1,
        seed,
        min_frames: 60,
        max_frames: 90,
        ..SynthConfig::default()
    }
}

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["annotations", "image"] {
        for e in fs::read_dir(root.join(sub)).unwrap() {
            let p = e.unwrap().path();
            out.insert(
                format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                fs::read(&p).unwrap(),
            );
        }
    }
    out
}

#[test]
fn same_seed_gives_byte_identical_files_and_another_seed_different_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    generate(&tiny(5), &a, false).unwrap();
    generate(&tiny(5), &b, false).unwrap();
    generate(&tiny(6), &c, false).unwrap();
    let (ta, tb, tc) = (read_tree(&a), read_tree(&b), read_tree(&c));
    let names: Vec<&str> = ta.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "annotations/vessel.json",
            "image/test01.npy",
            "image/train01.npy",
            "image/train02.npy",
            "image/val01.npy"
        ]
    );
    assert_eq!(ta, tb);
    for (name, bytes) in &ta {
        assert_ne!(Some(bytes), tc.get(name), "{name} is the same for seeds 5 and 6");
    }
    // Nothing but the dataset is left in the parent folder.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn adding_videos_leaves_earlier_videos_unchanged() {
    let small = tiny(9);
    let more = SynthConfig {
        train: 3,
        test: 2,
        ..small.clone()
    };
    for (subset, i, id) in small.plan() {
        assert_eq!(
            small.video(subset, i, &id).data,
            more.video(subset, i, &id).data,
            "{id}"
        );
    }
    // Videos of different splits with the same index differ.
    assert_ne!(
        small.video(Subset::Train, 0, "a").data,
        small.video(Subset::Test, 0, "a").data
    );
}

#[test]
fn annotations_follow_the_spec_layout_and_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vessel");
    let cfg = tiny(21);
    let summary = generate(&cfg, &out, false).unwrap();
    assert_eq!((summary.train, summary.val, summary.test), (2, 1, 1));
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("annotations/vessel.json")).unwrap()).unwrap();
    let db = json["database"].as_object().unwrap();
    let ids: Vec<&String> = db.keys().collect();
    assert_eq!(ids, ["train01", "train02", "val01", "test01"]);
    for (id, v) in db {
        let subset = v["subset"].as_str().unwrap();
        assert_eq!(
            subset,
            if id.starts_with("train") {
                "train"
            } else if id.starts_with("val") {
                "validation"
            } else {
                "test"
            }
        );
        assert_eq!(v["fps"].as_f64(), Some(15.0));
        let duration = v["duration"].as_f64().unwrap();
        let ann = v["annotations"].as_array().unwrap();
        assert_eq!(ann.len(), 2);
        assert_eq!(ann[0]["label"], "filling");
        assert_eq!(ann[0]["label_id"], 0);
        assert_eq!(ann[1]["label"], "washout");
        assert_eq!(ann[1]["label_id"], 1);
        let seg = |i: usize| {
            let s = ann[i]["segment"].as_array().unwrap();
            (s[0].as_f64().unwrap(), s[1].as_f64().unwrap())
        };
        let ((start, apex), (apex2, end)) = (seg(0), seg(1));
        assert_eq!(apex, apex2);
        assert!(
            0.0 <= start && start < apex && apex < end && end <= duration,
            "{id}: {start} {apex} {end} {duration}"
        );

        // The .npy: float32, C order, [T, 4096] with T = ⌊F/4⌋, values in [0, 1].
        let bytes = fs::read(out.join("image").join(format!("{id}.npy"))).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.order(), npyz::Order::C);
        assert_eq!(npy.dtype(), npyz::DType::Plain("<f4".parse().unwrap()));
        let shape = npy.shape().to_vec();
        let frames = (duration * 15.0).floor() as u64;
        assert_eq!(shape, vec![frames / 4, 4096], "{id}");
        let rows = shape[0] as f64;
        assert!(
            (duration * 15.0 / 4.0 - rows).abs() < 1.0,
            "{id}: duration·fps/stride vs T"
        );
        let data: Vec<f32> = npy.into_vec().unwrap();
        assert!(data.iter().all(|x| (0.0..=1.0).contains(x)), "{id}");
        let s = summary.videos.iter().find(|s| s.id == *id).unwrap();
        assert_eq!((s.frames as u64, s.rows as u64), (frames, shape[0]));
        // Keyframes come back exactly as ⌊fps·seconds⌋ (SPEC §7.2).
        assert_eq!(
            (
                (start * 15.0).floor() as usize,
                (apex * 15.0).floor() as usize,
                (end * 15.0).floor() as usize
            ),
            (s.start, s.apex, s.end)
        );
    }
}

#[test]
fn seconds_round_trip_to_frames() {
    for fps in [15.0, 12.5, 29.97, 30.0, 7.0] {
        for f in 0..2000usize {
            let s = frame_to_seconds(f, fps);
            assert_eq!((s * fps).floor() as usize, f, "frame {f} at {fps} fps");
            // Still the same frame when the value is read back a few ulps low.
            assert_eq!((s * (1.0 - 1e-12) * fps).floor() as usize, f, "frame {f} at {fps} fps");
            let exact = f as f64 / fps;
            assert!(s >= exact && s - exact <= 1e-3 / fps + 1e-4 + 1e-9, "{s} vs {exact}");
            // At most 4 decimals.
            assert!(((s * 1e4).round() - s * 1e4).abs() < 1e-6, "{s}");
        }
    }
    assert_eq!(frame_to_seconds(3, 15.0), 0.2001);
    assert_eq!(frame_to_seconds(29, 15.0), 1.9334);
}

#[test]
fn rows_match_duration_for_other_strides() {
    for (stride, clip) in [(4, 4), (1, 1), (2, 4), (8, 16)] {
        let cfg = SynthConfig {
            feat_stride: stride,
            num_frames: clip,
            ..SynthConfig::default()
        };
        for frames in 60..=240 {
            let t = cfg.rows_for(frames);
            // The last clip fits in the run, and one more would not.
            assert!((t - 1) * stride + clip <= frames && t * stride + clip > frames);
            assert!((frames as f64 / stride as f64 - t as f64).abs() <= clip as f64 / stride as f64);
        }
    }
}

/// Mean of a row.
fn mass(v: &SynthVideo, row: usize) -> f64 {
    v.row(row).iter().map(|&x| x as f64).sum::<f64>() / v.row(row).len() as f64
}

#[test]
fn vessels_fill_between_start_and_apex_and_wash_out_towards_end() {
    let cfg = SynthConfig {
        seed: 3,
        ..SynthConfig::default()
    };
    let (mut rise, mut fall, mut n) = (0.0, 0.0, 0);
    let mut rising_videos = 0;
    let mut falling_videos = 0;
    let (mut front_mid, mut front_apex) = (0, 0);
    for i in 0..16 {
        let v = cfg.video(Subset::Train, i, "v");
        let k = v.key;
        assert!(k.start < k.apex && k.apex < k.end && k.end < k.frames);
        assert!((60..=240).contains(&k.frames));
        assert!(v.data.iter().all(|x| (0.0..=1.0).contains(x) && x.is_finite()));
        // Rows wholly before start, around apex, and after end.
        let before = mass(&v, (k.start / 4).saturating_sub(1));
        let at_apex = mass(&v, k.apex / 4);
        let after = mass(&v, (k.end / 4 + 1).min(v.rows - 1));
        rise += (at_apex - before) / at_apex;
        fall += (at_apex - after) / at_apex;
        n += 1;
        if at_apex > 1.5 * before {
            rising_videos += 1;
        }
        if at_apex > 1.5 * after {
            falling_videos += 1;
        }
        // The filling front: the number of bright pixels grows through the filling.
        let bright = |row: usize| v.row(row).iter().filter(|&&x| x > 0.3).count();
        let (r0, r1) = (k.start / 4 + 1, k.apex / 4);
        let mid = (r0 + r1) / 2;
        if bright(mid) > bright(r0) {
            front_mid += 1;
        }
        if bright(r1) > 2 * bright(r0) {
            front_apex += 1;
        }
    }
    let (rise, fall) = (rise / n as f64, fall / n as f64);
    // On average the apex row holds far more signal than the rows before start and after
    // end, in nearly every video — but not infinitely more (catheter, noise, pre-contrast).
    assert!(rise > 0.45 && rise < 0.95, "mean relative rise {rise}");
    assert!(fall > 0.4 && fall < 0.95, "mean relative fall {fall}");
    assert!(
        rising_videos >= 15 && falling_videos >= 15,
        "{rising_videos} {falling_videos}"
    );
    // A flicker row may interrupt it, but the front visibly grows in nearly every video.
    assert!(front_mid >= 14 && front_apex >= 14, "{front_mid} {front_apex}");
}

#[test]
fn bad_settings_are_refused() {
    let cases = [
        SynthConfig {
            train: 0,
            val: 0,
            test: 0,
            ..SynthConfig::default()
        },
        SynthConfig {
            fps: 0.0,
            ..SynthConfig::default()
        },
        SynthConfig {
            feat_stride: 0,
            ..SynthConfig::default()
        },
        SynthConfig {
            min_frames: 100,
            max_frames: 90,
            ..SynthConfig::default()
        },
        SynthConfig {
            side: 2,
            ..SynthConfig::default()
        },
    ];
    for cfg in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = generate(&cfg, &dir.path().join("x"), false).unwrap_err();
        assert!(matches!(err, SynthError::Config(_)), "{err}");
        assert!(!dir.path().join("x").exists());
    }
    let err = tiny(1).video_by_id("train09").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no video 'train09' in this dataset (ids look like train01)"
    );
}

#[test]
fn invariants_hold_across_seeds() {
    for seed in 0..24u64 {
        let cfg = SynthConfig { seed, ..tiny(seed) };
        let v = cfg.video(Subset::Validation, seed as usize % 3, "v");
        let k = v.key;
        assert!(
            k.start < k.apex && k.apex < k.end && k.end < k.frames,
            "seed {seed}: {k:?}"
        );
        assert!((60..=90).contains(&k.frames), "seed {seed}");
        assert_eq!(v.rows, k.frames / 4, "seed {seed}");
        assert_eq!(v.data.len(), v.rows * 4096);
        assert!(v.data.iter().all(|x| (0.0..=1.0).contains(x)), "seed {seed}");
        let secs = [k.start, k.apex, k.end].map(|f| frame_to_seconds(f, v.fps));
        assert!(0.0 <= secs[0] && secs[0] < secs[1] && secs[1] < secs[2] && secs[2] <= v.duration());
        assert_eq!(secs.map(|s| (s * v.fps).floor() as usize), [k.start, k.apex, k.end]);
        assert_eq!((v.duration() * v.fps).floor() as usize, k.frames);
        // The first row is never empty: the catheter (≥ ~40 px long) is always there, if
        // faint in a dim video, and the empty tree responds faintly.
        let on = |t: f32| v.row(0).iter().filter(|&&x| x > t).count();
        assert!(
            on(0.1) > 40,
            "seed {seed}: only {} pixels above 0.1 in the first row",
            on(0.1)
        );
    }
}

/// The conventions of the whole chain agree: synth's keyframe frames → annotated seconds →
/// grid units (SPEC §2.2) → a head that regresses those segments exactly → decoding, soft-NMS
/// with voting, grid → seconds (SPEC §6) → keyframes (§6.4) give back the synthetic
/// keyframes to the frame, i.e. AD 0 against the keyframe table's ground truth (§7.2). An
/// off-by-one or half-row slip anywhere (inclusive ends, clip centres vs edges, the
/// 0.5·num_frames offset on one side only) moves some keyframe by at least one frame.
#[test]
fn exact_regression_gives_back_the_synthetic_keyframes() {
    use rand::SeedableRng;

    use crate::config::Config;
    use crate::config::adapt;
    use crate::dataset::Grid;
    use crate::infer::keyframes::{ground_truth_keyframes, keyframes_of};
    use crate::infer::{DecodeSetting, LevelOutput, postprocess};

    let cfg = Config::default();
    let synth = SynthConfig::default();
    assert_eq!(
        (cfg.dataset.feat_stride, cfg.dataset.num_frames),
        (synth.feat_stride, synth.num_frames)
    );
    let grid = Grid::from_config(&cfg);
    let fps = synth.fps;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for _ in 0..300 {
        let k = flow::draw_keyframes(&mut rng, synth.min_frames, synth.max_frames);
        let sec = |f: usize| frame_to_seconds(f, fps);
        let (fill, wash) = ([sec(k.start), sec(k.apex)], [sec(k.apex), sec(k.end)]);
        let rows = synth.rows_for(k.frames);
        // Filling on a stride-1 level, washout on a stride-2 level: each level has one
        // confident point, the one nearest its segment's centre, regressing it exactly.
        let level = |stride: usize, class: usize, seg: [f64; 2]| {
            let (a, b) = (grid.to_grid(seg[0], fps), grid.to_grid(seg[1], fps));
            let n = rows.div_ceil(stride);
            let i = ((0.5 * (a + b) / stride as f64).round() as usize).min(n - 1);
            let t = (i * stride) as f64;
            let mut logits = vec![-20.0f32; 2 * n];
            logits[2 * i + class] = 4.0;
            let mut offsets = vec![0.0f32; 2 * n];
            offsets[2 * i] = ((t - a) / stride as f64) as f32;
            offsets[2 * i + 1] = ((b - t) / stride as f64) as f32;
            LevelOutput {
                stride: stride as f32,
                logits,
                offsets,
                valid_len: n,
            }
        };
        let levels = [level(1, 0, fill), level(2, 1, wash)];
        let duration = sec(k.frames);
        let cands = postprocess(
            &levels,
            &adapt::decode_config(&cfg),
            &adapt::nms_config(&cfg),
            &adapt::grid_to_seconds(&cfg, fps, Some(duration)),
        )
        .unwrap();
        let (pred, _) = keyframes_of(&cands, 0, 1, fps, DecodeSetting::ApexMidpoint);
        let truth = ground_truth_keyframes(fill, wash, fps);
        assert_eq!(
            (truth.start, truth.apex, truth.end),
            (k.start as i64, k.apex as i64, k.end as i64)
        );
        assert_eq!(pred, truth, "{k:?}");
    }
}
